"""The status document as Prometheus text (exposition format 0.0.4), served at ``/metrics``.

Status knowledge, not HTTP: :func:`render_metrics` maps the dict built by
``gateway/app/status.py`` to metric families; ``gateway/app/admin_routes.py``
answers ``GET /metrics`` with it. Units are Prometheus base units named in the
metric: the status dict's ``_ms`` ages become ``_seconds``, cm/s becomes
``meters_per_second``. Missing sections give families without samples and
``None`` values give no sample (absent is not zero).

Threading: pure functions; any thread (the admin loop's, in the gateway).
"""
from __future__ import annotations

import math

from gateway.base.version import build_info

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LOOP_METRICS = (  # (status keys, first present wins; metric; type; help)
    (("iterations",), "railgate_loop_iterations_total", "counter", "Poll iterations of the IO loop."),
    (("events",), "railgate_loop_events_total", "counter", "fd events handled by the IO loop."),
    (("functors", "functors_run"), "railgate_loop_functors_total", "counter", "Cross-thread calls run."),
    (("timers", "timers_run"), "railgate_loop_timers_fired_total", "counter", "Timer callbacks run."),
    (("timers_missed",), "railgate_loop_timers_missed_total", "counter", "Timers that fired late."),
    (("callback_errors",), "railgate_loop_callback_errors_total", "counter", "Callbacks that raised."),
    (("links",), "railgate_loop_links", "gauge", "TCP links owned by the IO loop."),
    (("fds",), "railgate_loop_fds", "gauge", "File descriptors registered with the IO loop."),
    (("timers_pending",), "railgate_loop_timers_pending", "gauge", "Timers waiting to fire."),
)
_LINK_COUNTERS = (("rx_frames", "Frames received on the link."), ("tx_frames", "Frames sent on the link."),
                  ("rx_bytes", "Bytes received on the link."), ("tx_bytes", "Bytes sent on the link."))
_RECEIVER_COUNTERS = (("applied", "applied", "Frames applied (new sequence numbers)."),
                      ("duplicates", "duplicate", "Frames dropped as duplicates (normal on dual nets)."),
                      ("stale", "stale", "Frames dropped as stale (too old or out of order)."),
                      ("gap", "lost", "Frames never received (sequence gaps)."))


class _Families:
    """Metric families in first-use order; every family renders HELP and TYPE, even with no samples."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def add(self, name: str, kind: str, help_: str, value, /, **labels: object) -> None:
        family = self._families.setdefault(name, (kind, help_, []))
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, (int, float)):
            return  # None (not known yet) has no sample; absent is not zero
        text = ("NaN" if math.isnan(value) else "+Inf" if value == math.inf else "-Inf" if value == -math.inf
                else repr(value))
        pairs = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items())
        family[2].append(f"{name}{{{pairs}}} {text}" if pairs else f"{name} {text}")

    def render(self) -> str:
        out = []
        for name, (kind, help_, samples) in self._families.items():
            out += [f"# HELP {name} {help_.replace(chr(92), chr(92) * 2)}", f"# TYPE {name} {kind}", *samples]
        return "\n".join(out) + "\n"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _scaled(value, factor: float):
    return value / factor if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def render_metrics(status: dict) -> str:
    """The status dict (``gateway/app/status.py``) as Prometheus text 0.0.4. Pure; any thread.

    Missing sections give families without samples; ``None`` values give no sample.
    """
    f = _Families()
    # the status's version is the serving gateway's; a status without one (older, or a test's) gets ours
    build = {**build_info(), **({"version": status["version"]} if status.get("version") else {})}
    f.add("railgate_info", "gauge", "Gateway identity in labels; always 1.", 1, gateway_id=status.get("gateway_id", ""),
          name=status.get("name", ""), version=build["version"])
    f.add("railgate_build_info", "gauge", "The running build in labels (version, Python version, hot-path "
          "implementation); always 1.", 1, **build)
    f.add("railgate_uptime_seconds", "gauge", "Seconds since the gateway started.", status.get("uptime_s"))
    for d in status.get("devices", ()):
        dev = d.get("id")
        f.add("railgate_device_info", "gauge", "Configured device; name and kind in labels; always 1.", 1,
              device=dev, name=d.get("name", ""), kind=d.get("kind", ""))
        f.add("railgate_device_reachable", "gauge", "1 if the device is reachable on a net.", d.get("reachable"),
              device=dev)
        _receiver(f, "device", d, device=dev)
        for link in d.get("links", ()):
            where = {"device": dev, "net": link.get("net")}
            f.add("railgate_link_up", "gauge", "1 if the link is alive (heartbeats arriving).", link.get("alive"),
                  **where)
            for key, help_ in _LINK_COUNTERS:
                f.add(f"railgate_link_{key}_total", "counter", help_, link.get(key), **where)
            f.add("railgate_link_last_rx_age_seconds", "gauge", "Seconds since the link last received a frame.",
                  _scaled(link.get("last_rx_age_ms"), 1000), **where)
            f.add("railgate_link_errors_total", "counter", "Frames rejected on the link, by reason.", None)
            for reason, n in sorted((link.get("errors") or {}).items()):
                f.add("railgate_link_errors_total", "counter", "", n, **where, reason=reason)
    for t in status.get("trains", ()):
        train = t.get("id")
        f.add("railgate_train_reachable", "gauge", "1 if the train reports within its heartbeat.",
              t.get("reachable"), train=train)
        f.add("railgate_train_speed_meters_per_second", "gauge", "Last reported train speed.",
              _scaled(t.get("speed_cm_s"), 100), train=train)
        f.add("railgate_train_last_rx_age_seconds", "gauge", "Seconds since the train's last datagram.",
              _scaled(t.get("last_rx_age_ms"), 1000), train=train)
        _receiver(f, "train", t, train=train)
    udp = status.get("udp") or {}
    f.add("railgate_udp_rx_datagrams_total", "counter", "UDP datagrams received.", udp.get("rx_datagrams"))
    f.add("railgate_udp_dropped_no_slab_total", "counter", "UDP datagrams dropped: no free slab.",
          udp.get("dropped_no_slab"))
    f.add("railgate_udp_errors_total", "counter", "UDP datagrams rejected, by reason.", None)
    for reason, n in sorted((udp.get("errors") or {}).items()):
        f.add("railgate_udp_errors_total", "counter", "", n, reason=reason)
    for loop in status.get("loops", ()):
        for keys, name, kind, help_ in _LOOP_METRICS:
            key = next((k for k in keys if k in loop), None)
            if key is not None:  # loops report links or fds, not both: no family that is always empty
                f.add(name, kind, help_, loop[key], loop=loop.get("name"))
    pools = status.get("pools") or {}
    slabs, links = pools.get("slabs") or {}, pools.get("links") or {}
    for state in ("in_use", "free"):
        f.add("railgate_pool_slabs", "gauge", "UDP receive slabs, by state.", slabs.get(state), state=state)
    f.add("railgate_pool_slabs_high_water", "gauge", "Most slabs in use at once.", slabs.get("high_water"))
    f.add("railgate_pool_exhausted_total", "counter", "Slab requests refused: pool empty.", slabs.get("exhausted"))
    f.add("railgate_pool_links", "gauge", "Link buffer sets in use.", links.get("in_use"), state="in_use")
    f.add("railgate_pool_links_max", "gauge", "Most link buffer sets allowed.",
          links.get("max", links.get("max_items")))
    f.add("railgate_pool_links_refused_total", "counter", "Connections refused: link pool full.", links.get("refused"))
    f.add("railgate_condition_active", "gauge", "Active conditions (1 each), by name and source.", None)
    for cond in status.get("conditions", ()):
        f.add("railgate_condition_active", "gauge", "", 1, name=cond.get("name"), source=cond.get("source"))
    f.add("railgate_gateway_counter_total", "counter", "Gateway-wide counters (reloads, ...), by name.", None)
    for name, n in sorted((status.get("counters") or {}).items()):
        f.add("railgate_gateway_counter_total", "counter", "", n, counter=name)
    return f.render()


def _receiver(f: _Families, kind: str, obj: dict, **labels) -> None:
    for key, outcome, help_ in _RECEIVER_COUNTERS:
        f.add(f"railgate_{kind}_frames_{outcome}_total", "counter", help_, obj.get(key), **labels)
