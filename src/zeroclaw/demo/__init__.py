"""``zeroclaw demo``: the whole gateway under simulated chat traffic, live, with a report.

``scenario`` plans the traffic (seeded), ``channel`` offers it through the gateway's intake,
``record`` keeps what happened to every delivery, ``sampler`` the time series, ``live`` shows
it, ``verdict`` checks the pipeline's guarantees on it, ``report`` prints and writes it, and
``run`` wires them to a real :class:`~zeroclaw.gateway.app.Gateway`. Needs the ``demo`` extra
(the gateway's HTTP stack, rich for the live view, matplotlib for the chart); importing this
package loads none of them.
"""
