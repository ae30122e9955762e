"""The demo's chat platform: a push channel that offers the planned deliveries on time.

It goes through the gateway's intake exactly as the webhook does (``submit``, then the result to
``deliver``), so every message meets the same dedup, breaker, backpressure, lanes and pool as in
``zeroclaw serve``. Deliveries are offered one after another in plan order, each without waiting
for an answer (as a platform does), which fixes the arrival order the verdict checks.
"""

from __future__ import annotations

import asyncio
import logging

from zeroclaw.channels.base import Intake
from zeroclaw.concurrency._clock import Clock, resolve_clock
from zeroclaw.concurrency.channel_integration import ChannelMessage, MessageResult
from zeroclaw.demo.record import RunRecord
from zeroclaw.demo.scenario import PlannedDelivery

__all__ = ["CHANNEL_NAME", "SimulatedChat"]

_logger = logging.getLogger("zeroclaw.demo")

CHANNEL_NAME = "demo"
# The metadata key of a message that names its delivery in the record.
_DELIVERY = "delivery"


class SimulatedChat:
    """Offers ``plan`` through ``intake`` on ``clock`` and records everything in ``record``.

    ``listen`` runs the plan (offsets from when it starts), then waits at most ``settle_timeout``
    for the accepted messages' results and until ``until`` seconds have passed since it started
    (the calm after the traffic), and returns: the gateway then stops on its own. It stops
    offering (and waiting for ``until``) once the intake drains (Ctrl-C) or
    :meth:`stop_offering` is called.
    """

    def __init__(
        self,
        intake: Intake,
        plan: list[PlannedDelivery],
        record: RunRecord,
        *,
        settle_timeout: float = 30.0,
        until: float = 0.0,
        clock: Clock | None = None,
    ) -> None:
        self._intake = intake
        self._plan = plan
        self.record = record
        self._settle_timeout = settle_timeout
        self._until = until
        self._clock = resolve_clock(clock)
        self._settled = asyncio.Event()
        self._stop = False
        self.started_at: float | None = None
        self.offering_done = False

    @property
    def name(self) -> str:
        """``"demo"``."""
        return CHANNEL_NAME

    @property
    def kind(self) -> str:
        """``"simulated"``: what ``/status`` and the logs call it."""
        return "simulated"

    def now(self) -> float:
        """Seconds since the plan started (0.0 before). Does not block."""
        if self.started_at is None:
            return 0.0
        return self._clock.now() - self.started_at

    def stop_offering(self) -> None:
        """Offer nothing more; ``listen`` still waits for the results of what was accepted."""
        self._stop = True

    def _draining(self) -> bool:
        return self._stop or bool(getattr(self._intake, "draining", False))

    async def listen(self, queue: asyncio.Queue[ChannelMessage]) -> None:
        """Offer the plan, then wait for the pending results (see the class doc). Blocks for
        the run; ``queue`` is not used (a push channel admits through the intake)."""
        del queue
        self.started_at = self._clock.now()
        for planned in self._plan:
            if self._draining():
                break
            delay = planned.at - self.now()
            if delay > 0:
                await self._clock.sleep(delay)
            if self._draining():
                break
            await self._offer(planned)
        self.offering_done = True
        if self.record.pending:
            try:
                async with asyncio.timeout(self._settle_timeout):
                    await self._settled.wait()
            except TimeoutError:
                _logger.warning(
                    "%d accepted messages had no result %gs after the traffic ended",
                    self.record.pending,
                    self._settle_timeout,
                )
        while not self._draining() and self.now() < self._until:
            await self._clock.sleep(min(0.25, self._until - self.now()))

    async def _offer(self, planned: PlannedDelivery) -> None:
        index = self.record.offered(planned, self.now())
        message = ChannelMessage(
            id=planned.message_id,
            sender=planned.sender,
            content=planned.text,
            channel=CHANNEL_NAME,
            timestamp=self._clock.now(),
            metadata={_DELIVERY: index},
        )
        try:
            admission = await self._intake.submit(self, message)
        except RuntimeError as exc:  # the gateway stopped under us
            _logger.warning("offering %s: %s", planned.message_id, exc)
            self._stop = True
            return
        self.record.admitted(index, admission.kind, admission.reason, self.now())

    async def deliver(
        self, message: ChannelMessage, result: MessageResult, text: str | None
    ) -> None:
        """Record the result of an accepted message. Does not block."""
        del text
        index = message.metadata.get(_DELIVERY)
        self.record.answered(index if isinstance(index, int) else -1, result.kind, self.now())
        self._intake.finished(message, result)
        if self.offering_done and self.record.pending == 0:
            self._settled.set()

    async def send(self, message: str, recipient: str) -> None:
        """Not used: results go to :meth:`deliver`.

        Raises:
            RuntimeError: always (a send here would be a result the record does not see).
        """
        raise RuntimeError("the demo channel takes results through deliver(), not send()")

    async def health_check(self) -> bool:
        """``True``: the simulated platform is always reachable."""
        return True
