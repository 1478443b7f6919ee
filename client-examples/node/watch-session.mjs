// Watch one herald session with the stock socket.io-client: the JavaScript
// client from the WebSocket real-time updates document, as is, plus exiting
// once the session completes.
//
//   HERALD_URL=http://localhost:3000 node watch-session.mjs <session-id>
//   SESSION_ID=<session-id> node watch-session.mjs
//
// It subscribes in its connect handler (so it re-subscribes after a
// reconnect), prints every session event, and after `completed` unsubscribes,
// disconnects and exits 0.

import { io } from 'socket.io-client';

const url = process.env.HERALD_URL || 'http://localhost:3000';
const sessionId = process.argv[2] || process.env.SESSION_ID;
if (!sessionId) {
  console.error('usage: node watch-session.mjs <session-id>   (or set SESSION_ID)');
  process.exit(2);
}

// Connect to WebSocket server
const socket = io(url, {
  path: '/socket.io/',
  transports: ['websocket', 'polling']
});

// Handle connection; subscribe here so a reconnect subscribes again
socket.on('connect', () => {
  console.log('Connected to WebSocket:', socket.id);
  socket.emit('subscribe', sessionId);
});

socket.on('connect_error', (error) => {
  console.error('Connection error:', error.message);
});

// Listen for subscription confirmation
socket.on('subscribed', (data) => {
  console.log('Subscribed to session:', data.sessionId);
});

// Listen for progress updates
socket.on('progress', (data) => {
  console.log(`Progress: ${data.progress}%`);
  console.log('Prompts:', data.prompts);
  console.log('Status:', data.status);
});

// Listen for model results (multi-model execution)
socket.on('model_result', (data) => {
  console.log(`Model: ${data.modelName}`);
  console.log(`Provider: ${data.provider}`);
  console.log(`Duration: ${data.duration}ms`);
  console.log(`Status: ${data.status}`);

  if (data.status === 'completed') {
    console.log('Result:', data.result);
  } else if (data.error) {
    console.error('Error:', data.error);
  }
});

// Listen for clarification requests
socket.on('clarification', (data) => {
  console.log('Clarification needed:');
  console.log('Question:', data.question);
  console.log('Clarification ID:', data.clarificationId);
  // Prompt user to answer and POST to /api/wizard/clarifications/respond
});

// Listen for session completion
socket.on('completed', (data) => {
  console.log('Session completed!');
  console.log('Result:', data.result);

  // Unsubscribe when done, then disconnect when finished
  socket.timeout(5000).emit('unsubscribe', sessionId, () => {
    socket.disconnect();
  });
});

// Listen for errors
socket.on('error', (data) => {
  console.error('Session error:', data.error);
});

// Disconnect when finished
socket.on('disconnect', () => {
  console.log('Disconnected from WebSocket');
  if (!socket.active) process.exit(0);
});
