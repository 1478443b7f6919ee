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
"""

import json
import os
import sys

import socketio

url = os.environ.get('HERALD_URL', 'http://localhost:3000')
session_id = sys.argv[1] if len(sys.argv) > 1 else os.environ.get('SESSION_ID')
if not session_id:
    print('usage: python watch_session.py <session-id>   (or set SESSION_ID)',
          file=sys.stderr, flush=True)
    sys.exit(2)

exit_code = 0

# Create client
sio = socketio.Client()


# Connect handlers
@sio.on('connect')
def on_connect():
    print(f'Connected to WebSocket: {sio.get_sid()}', flush=True)
    sio.emit('subscribe', session_id)


@sio.on('subscribed')
def on_subscribed(data):
    print(f"Subscribed to session: {data['sessionId']}", flush=True)


@sio.on('progress')
def on_progress(data):
    print(f"Progress: {data['progress']}%", flush=True)
    print(f"Status: {data['status']}", flush=True)


@sio.on('model_result')
def on_model_result(data):
    print(f"Model {data['modelName']}: {data['status']}", flush=True)
    if data['status'] == 'completed':
        print(f"Result: {data['result']}", flush=True)
    elif data.get('error'):
        print(f"Error: {data['error']}", flush=True)


@sio.on('clarification')
def on_clarification(data):
    print('Clarification needed:', flush=True)
    print(f"Question: {data['question']}", flush=True)
    print(f"Clarification ID: {data['clarificationId']}", flush=True)
    # Prompt the user to answer and POST to /api/wizard/clarifications/respond


@sio.on('completed')
def on_completed(data):
    print('Session completed!', flush=True)
    print(f"Result: {json.dumps(data['result'])}", flush=True)
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
        print(f"Subscribe refused ({data['code']}): {data['error']}", flush=True)
        exit_code = 2
    else:
        print(f"Session error: {data['error']}", flush=True)
        exit_code = 1
    sio.disconnect()


@sio.on('disconnect')
def on_disconnect(*reason):
    print('Disconnected from WebSocket', flush=True)


# Connect
sio.connect(url, socketio_path='/socket.io/')

# Keep alive
sio.wait()
sys.exit(exit_code)
