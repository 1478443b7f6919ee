"""Watch one herald session with python-socketio's AsyncClient and herald_resume,
so a dropped connection (or a restart of this script) loses nothing.

    pip install -r requirements.txt
    HERALD_URL=http://localhost:3000 python watch_session_resume.py <session-id>
    STATE_FILE=doc-42.json python watch_session_resume.py doc-42   # resume where the last run stopped

It prints one line per event, `seq <n> <event> ...`, each event once and in
order, also across reconnects (the client reconnects by itself; the helper
resubscribes with the last seq and epoch). With STATE_FILE it saves where it
is after every event and starts from there the next time. If herald no longer
has some events it says so (`lost: ...`). It exits 0 after `completed`, 1
after a session `error`, 2 if herald refuses the session id.
"""

import asyncio
import json
import os
import sys

import socketio

from herald_resume import watch_session

url = os.environ.get('HERALD_URL', 'http://localhost:3000')
state_file = os.environ.get('STATE_FILE')


async def main(session_id: str) -> int:
    sio = socketio.AsyncClient()
    done = asyncio.get_running_loop().create_future()
    saved = None
    if state_file and os.path.exists(state_file):
        with open(state_file) as f:
            saved = json.load(f)

    def on_event(name, data):
        detail = {
            'progress': lambda: f"{data['progress']}% {data['status']}",
            'model_result': lambda: f"{data['modelName']} {data['status']}",
            'clarification': lambda: data['question'],
            'completed': lambda: json.dumps(data['result']),
            'error': lambda: data['error'],
        }[name]()
        print(f"seq {data['seq']} {name} {detail}", flush=True)
        if state_file:
            # Saved once the event is printed: a run killed in between prints
            # that event again next time, rather than never. Write, then
            # rename: a run killed midway leaves the old file, never half of one.
            with open(state_file + '.tmp', 'w') as f:
                json.dump(watch.position, f)
            os.replace(state_file + '.tmp', state_file)
        if name in ('completed', 'error') and not done.done():
            done.set_result(0 if name == 'completed' else 1)

    def on_subscribed(info):
        if info['since'] is None:
            print(f"subscribed to {session_id} (snapshot at seq {info['seq']})", flush=True)
        else:
            print(f"resumed after seq {info['since']}: {info['replayed']} replayed", flush=True)

    def on_lost(info):
        # A real app would reload what it shows here, e.g. from
        # GET /api/v1/sessions/{id} (the latest progress) or .../events.
        print(f"lost: herald no longer has some events ({info['reason']})", flush=True)

    def on_refused(reply):
        print(f"subscribe refused ({reply['code']}): {reply['error']}", flush=True)
        if not done.done():
            done.set_result(2)

    watch = watch_session(sio, session_id, on_event, on_subscribed=on_subscribed,
                          on_lost=on_lost, on_refused=on_refused, position=saved)
    await sio.connect(url, socketio_path='/socket.io/')
    code = await done
    await watch.stop()
    await sio.disconnect()
    return code


if __name__ == '__main__':
    session = sys.argv[1] if len(sys.argv) > 1 else os.environ.get('SESSION_ID')
    if not session:
        print('usage: python watch_session_resume.py <session-id>   (or set SESSION_ID)',
              file=sys.stderr, flush=True)
        sys.exit(2)
    sys.exit(asyncio.run(main(session)))
