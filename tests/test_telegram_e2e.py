"""End to end: ``python -m zeroclaw serve --config F`` with Telegram channels in both modes.

The Bot API is the fake server (tests.fakes.telegram_api) in this process on loopback, the
provider the echo backend: a polled update and a webhook update each get exactly one reply on the
wire, and ``/status`` reports the channels healthy through ``getMe``.
"""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.fakes.telegram_api import FakeTelegram, message_update
from tests.gateway_process import start_serve, until, write_config

SECRET = "e2e-secret"


async def test_serve_answers_polled_and_webhook_updates_once(tmp_path: Path) -> None:
    async with FakeTelegram() as fake:
        config = write_config(
            tmp_path,
            f"""
[gateway]
port = 0
shutdown_timeout = 5.0

[provider]
kind = "echo"

[channels.poll]
kind = "telegram"
bot_token = "{fake.token}"
api_base = "{fake.base_url}"
allowed_users = ["alice"]

[channels.hook]
kind = "telegram"
mode = "webhook"
bot_token = "{fake.token}"
secret_token = "{SECRET}"
api_base = "{fake.base_url}"
allowed_users = ["*"]
""",
        )
        fake.queue_update(
            message_update(1, chat_id=501, text="polled"),
            message_update(2, chat_id=502, user_id=9, username="eve", text="not allowed"),
        )
        served = await start_serve(config)
        try:
            await until(lambda: fake.texts_to(501) == ["polled"], what="polled reply")
            await until(lambda: fake.pending == [], what="offset confirmed")
            update = message_update(3, chat_id=503, text="pushed")
            async with aiohttp.ClientSession() as session:
                url = served.base + "/channels/hook"
                headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET}
                for _ in range(3):
                    async with session.post(url, json=update, headers=headers) as response:
                        assert response.status == 200
                async with session.post(url, json=update) as response:
                    assert response.status == 401
                await until(lambda: fake.texts_to(503) == ["pushed"], what="webhook reply")
                async with session.get(served.base + "/status") as response:
                    status = await response.json()
            assert status["channels"]["poll"]["kind"] == "telegram"
            assert status["channels"]["poll"]["healthy"] is True
            assert status["channels"]["hook"]["healthy"] is True
            assert fake.texts_to(502) == []
            assert fake.texts_to(503) == ["pushed"]  # three deliveries, one reply
        finally:
            code = await served.stop()
        assert code == 0, served.log()
