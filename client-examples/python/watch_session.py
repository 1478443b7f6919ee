"""Watch one herald session with the stock python-socketio client: the Python
client from the WebSocket real-time updates document, as is, plus the
clarification and error handlers and exiting once the session is over.

    pip install -r requirements.txt
    HERALD_URL=http://localhost:3000 python watch_session.py <session-id>
    SESSION_ID=<session-id> python watch_session.py

It subscribes in its connect handler (so it subscribes again after a
reconnect) and prints every session event. After `completed` it unsubscribes,
disconnects and exits 0; after a session `error` it disconnects and exits 1;
if herald refuses the session id it exits 2.

Note: the sync socketio.Client runs each event's handler in a thread of its
own, so events that arrive in the same instant may print in any order; each
event carries `seq` (1, 2, 3, ... per session) for code that needs the order.
For the same reason each handler prints its lines in one piece (`say`), so
that two events' lines never mix.
"""

import json
import os
import sys
import threading

import socketio

url = os.environ.get('HERALD_URL', 'http://localhost:3000')
session_id = sys.argv[1] if len(sys.argv) > 1 else os.environ.get('SESSION_ID')
if not session_id:
    print('usage: python watch_session.py <session-id>   (or set SESSION_ID)',
          file=sys.stderr, flush=True)
    sys.exit(2)

exit_code = 0
_printing = threading.Lock()


def say(*lines):
    """Prints one event's lines together: handlers run in threads of their own."""
    with _printing:
        sys.stdout.write(''.join(f'{line}\n' for line in lines))
        sys.stdout.flush()


# Create client
sio = socketio.Client()


# Connect handlers
@sio.on('connect')
def on_connect():
    say(f'Connected to WebSocket: {sio.get_sid()}')
    sio.emit('subscribe', session_id)


@sio.on('subscribed')
def on_subscribed(data):
    say(f"Subscribed to session: {data['sessionId']}")


@sio.on('progress')
def on_progress(data):
    say(f"Progress: {data['progress']}%", f"Status: {data['status']}")


@sio.on('model_result')
def on_model_result(data):
    lines = [f"Model {data['modelName']}: {data['status']}"]
    if data['status'] == 'completed':
        lines.append(f"Result: {data['result']}")
    elif data.get('error'):
        lines.append(f"Error: {data['error']}")
    say(*lines)


@sio.on('clarification')
def on_clarification(data):
    say('Clarification needed:', f"Question: {data['question']}",
        f"Clarification ID: {data['clarificationId']}")
    # Prompt the user to answer and POST to /api/wizard/clarifications/respond


@sio.on('completed')
def on_completed(data):
    say('Session completed!', f"Result: {json.dumps(data['result'])}")
    try:
        sio.call('unsubscribe', session_id, timeout=5)
    except socketio.exceptions.TimeoutError:
        pass
    sio.disconnect()


@sio.on('error')
def on_error(data):
    global exit_code
    if 'code' in data:
        # A reply to a bad request (here: a session id herald refuses).
        say(f"Subscribe refused ({data['code']}): {data['error']}")
        exit_code = 2
    else:
        say(f"Session error: {data['error']}")
        exit_code = 1
    sio.disconnect()


@sio.on('disconnect')
def on_disconnect(*reason):
    say('Disconnected from WebSocket')


# Connect
sio.connect(url, socketio_path='/socket.io/')

# Keep alive
sio.wait()
sys.exit(exit_code)
