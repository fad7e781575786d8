"""``GET /``: a plain HTML page for the person at the line: model, traffic, drift and the last swap.

No script, style sheet, font or image is fetched from anywhere: the page is
one self-contained document that refreshes itself every few seconds.
"""

from __future__ import annotations

import time
from html import escape

REFRESH_SECONDS = 5
STATE_COLOURS = {"ok": "#1b7f3b", "drift": "#b3261e", "too few images": "#6b6b6b"}


def _when(stamp: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp)) if stamp else "never"


def _ms(seconds: float | None) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds is not None else "–"


def render_status(state: dict, requests: dict) -> str:
    """The page for the logger's ``state`` and the ``requests`` summary of
    :func:`~cvm_lightning.deploy.serving.telemetry.request_summary`."""
    model = state.get("model") or {}
    drift = state.get("drift") or {"classes": {}, "drifted": [], "next_step": None, "reference_images": 0}
    rows = []
    windows = ([("all images", drift["all"])] if drift.get("all") else []) + list(drift["classes"].items())
    for name, judged in windows:
        colour = STATE_COLOURS.get(judged["state"], "#000")
        z = (f"{judged['z_nearest']:+.1f} / {judged['z_margin']:+.1f}" if "z_nearest" in judged else "–")
        rows.append(f"<tr><td>{escape(name)}</td><td style=\"color:{colour};font-weight:bold\">"
                    f"{escape(judged['state'])}</td><td>{judged['images']}</td><td>{z}</td></tr>")
    if not drift.get("reference_images"):
        rows = ["<tr><td colspan=4>No drift reference: start the server with --reference DIR.</td></tr>"]
    swap = state.get("last_swap")
    swap_text = (f"{_when(swap['time'])}: {escape(swap['previous']['version'][:12])} &rarr; "
                 f"{escape(swap['model']['version'][:12])} from {escape(file_name(swap['path']))}"
                 if swap else "none since the server started")
    refusal = state.get("last_refusal")
    refusal_text = (f"<p class=refused>Last refused file ({_when(refusal['time'])}): "
                    f"{escape(file_name(refusal['path']))}: {escape(refusal['reason'])}</p>" if refusal else "")
    advice = f"<p class=advice>{escape(drift['next_step'])}</p>" if drift.get("next_step") else ""
    classes = ", ".join(map(escape, model.get("classes", [])))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<title>cvm serve: {escape(model.get('name', 'starting'))}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #1c1c1c; max-width: 60em }}
table {{ border-collapse: collapse }} td, th {{ border: 1px solid #bbb; padding: .3em .8em; text-align: left }}
.advice {{ background: #fdecea; padding: .6em; border-left: 4px solid #b3261e }}
.refused {{ color: #b3261e }} code {{ font-size: 1.05em }}
</style></head><body>
<h1>cvm serve</h1>
<h2>Model</h2>
<p><b>{escape(model.get('name', 'loading'))}</b>, version <code id=version>{escape(model.get('version', ''))}</code>,
loaded {_when(model.get('since'))}</p>
<p>Classes ({len(model.get('classes', []))}): {classes}</p>
<h2>Requests</h2>
<p>Served <b id=served>{requests['served']}</b>, refused or failed {requests['failed']};
latency p50 <b id=p50>{_ms(requests['p50'])}</b>, p99 <b id=p99>{_ms(requests['p99'])}</b></p>
<h2>Drift</h2>
<table id=drift><tr><th>class</th><th>state</th><th>images in window</th><th>z nearest / margin</th></tr>
{''.join(rows)}
</table>
{advice}
<h2>Last swap</h2>
<p id=swap>{swap_text}</p>
{refusal_text}
<p><small>Updated {_when(time.time())}; refreshes every {REFRESH_SECONDS} s. JSON: <a href="/drift">/drift</a>,
metrics: <a href="/metrics">/metrics</a>.</small></p>
</body></html>
"""


def file_name(path: str) -> str:
    """A file's name without its folders: the page shows no server path."""
    return path.replace("\\", "/").rsplit("/", 1)[-1]
