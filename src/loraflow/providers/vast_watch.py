"""The dead-man switch a rented machine runs from its start (Vast.ai: the `onstart` script; RunPod: the
container's start command), whichever provider rented it.

The orchestrator touches `~/.loraflow-watch/heartbeat` over the SSH connection it already has (the
runner's pump, the worker's follower) every quarter of `compute.heartbeat_minutes`. When the file goes
stale, or the job's hours (plus half an hour) pass, the host itself:

1. notes why in `fired` (an orchestrator that comes back in time reads it: the trainer's stop was the
   watcher's, not the user's), asks the trainer to checkpoint (SIGTERM; the builtin trainer finishes
   its step and saves) and waits for it to exit,
2. pushes the newest finished checkpoint as a tar to the presigned PUT URL in `upload_url` when the
   orchestrator left one (no credentials on the host: the URL is the permission) and the tar fits in one
   PUT (5 GiB, RESCUE_PUT_MAX_BYTES; far above a LoRA's checkpoint with its optimizer state),
3. destroys its own machine with the provider's command (`self_destroy`: Vast.ai's instance-scoped
   `CONTAINER_API_KEY` on `CONTAINER_ID`; RunPod's pod-scoped `RUNPOD_API_KEY` on `RUNPOD_POD_ID`),
   calling again every poll until the API says yes: one 429 or 5xx must not leave a stopped trainer's GPU
   billing.

So an orchestrator that dies (a laptop asleep, a killed process) costs at most the heartbeat window plus
the checkpoint interval, instead of the GPU billing until the job's hours run out. POSIX sh and curl only:
it runs before anything is installed. `onstart` is limited to 4096 characters with the image's args.
"""

from __future__ import annotations

WATCH_DIR = "~/.loraflow-watch"
# What the orchestrator runs over SSH to say it is alive.
TOUCH = "mkdir -p ~/.loraflow-watch && touch ~/.loraflow-watch/heartbeat"
# What the orchestrator runs to learn whether the watcher fired (empty output: it did not).
FIRED = "cat ~/.loraflow-watch/fired 2>/dev/null || true"
SAVE_GRACE_S = 600  # the longest the host waits for the trainer to save and exit
TYPICAL_SAVE_S = 2  # what a LoRA trainer's save on SIGTERM usually takes (its step, then a few MB written)
# One presigned PUT carries at most 5 GiB (S3's single-request limit; R2's too): a bigger rescue tar is not
# pushed (the watch log says why) and the orchestrator never takes back more (running/lease_files.py).
RESCUE_PUT_MAX_BYTES = 5 * 1024**3

_WATCH = r"""W="$HOME/.loraflow-watch"
mkdir -p "$W"; touch "$W/heartbeat"; start=$(date +%s)
while sleep POLL; do
  now=$(date +%s)
  if [ $((now - start)) -ge MAX_S ]; then why="the job's hours passed"
  else
    hb=$(stat -c %Y "$W/heartbeat" 2>/dev/null || echo "$now")
    [ $((now - hb)) -lt STALE_S ] && continue
    why="no heartbeat for $((now - hb)) s"
  fi
  echo "$(date -u) $why: saving a checkpoint and destroying this instance" >> "$W/watch.log"
  echo "$why" > "$W/fired"
  root=$(cat "$W/root" 2>/dev/null); pid=$(cat "$root/run/train.pid" 2>/dev/null)
  if [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; then
    i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt GRACE_S ]; do sleep 1; i=$((i + 1)); done
  fi
  last=$(ls -d "$root"/checkpoints/step-* 2>/dev/null | grep -v '\.partial$' | sort | tail -n 1)
  if [ -n "$root" ] && [ -n "$last" ] && [ -s "$W/upload_url" ]; then
    tar -C "$root/checkpoints" -cf "$W/rescue.tar" "${last##*/}" && size=$(stat -c %s "$W/rescue.tar") &&
    if [ "$size" -gt PUT_MAX ]; then echo "not pushed: $size bytes is over one PUT's PUT_MAX" >> "$W/watch.log"
    else curl -sS -f -X PUT -T "$W/rescue.tar" "$(cat "$W/upload_url")" >> "$W/watch.log" 2>&1 &&
      echo "pushed ${last##*/}" >> "$W/watch.log"; fi
  fi
  until SELF_DESTROY >> "$W/watch.log" 2>&1; do
    echo "$(date -u) the destroy call failed; trying again" >> "$W/watch.log"; sleep POLL
  done
  break
done
"""


def _stale_s(heartbeat_s: float) -> int:
    """How old the heartbeat file may get before the watcher fires (whole seconds: `date +%s`)."""
    return max(1, int(heartbeat_s))


def _poll_s(heartbeat_s: float) -> int:
    """How often the watcher looks at the heartbeat (a sixth of the window, 1 to 30 s)."""
    return max(1, min(30, _stale_s(heartbeat_s) // 6))


def watch_script(heartbeat_s: float, max_hours: float | None, self_destroy: str) -> str:
    """The start text: writes the watcher next to its heartbeat and starts it in the background.
    `self_destroy` is one shell command that destroys this machine through its provider's API (it exits
    non-zero when the API refused, so the watcher calls again)."""
    stale = _stale_s(heartbeat_s)
    body = (
        _WATCH.replace("POLL", str(_poll_s(heartbeat_s)))
        .replace("MAX_S", str(int((max_hours or 24) * 3600) + 1800))
        .replace("STALE_S", str(stale))
        .replace("GRACE_S", str(SAVE_GRACE_S))
        .replace("PUT_MAX", str(RESCUE_PUT_MAX_BYTES))
        .replace("SELF_DESTROY", self_destroy)
    )
    return (
        'mkdir -p "$HOME/.loraflow-watch"\n'
        "cat > \"$HOME/.loraflow-watch/watch.sh\" <<'LORAFLOW_WATCH'\n"
        f"{body}LORAFLOW_WATCH\n"
        'nohup sh "$HOME/.loraflow-watch/watch.sh" >> "$HOME/.loraflow-watch/watch.log" 2>&1 &\n'
    )


def pump_interval_s(heartbeat_s: float) -> float:
    """How often the orchestrator touches the heartbeat: four times per window."""
    return max(0.5, heartbeat_s / 4)


def destroyed_by(last_beat: float, heartbeat_s: float) -> float:
    """When a host that last heard from the orchestrator at `last_beat` (epoch seconds) has destroyed itself:
    the stale window, half the watcher's poll (on average it notices that much later), and a trainer's usual
    few seconds to save on SIGTERM (the watcher waits up to SAVE_GRACE_S for a slow one). A lost host's
    lease ends here, not when somebody next looks at the job: it stopped billing long before that."""
    return last_beat + _stale_s(heartbeat_s) + _poll_s(heartbeat_s) / 2 + TYPICAL_SAVE_S
