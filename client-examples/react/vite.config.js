import { defineConfig } from 'vite';

// No @vitejs/plugin-react: esbuild compiles the JSX (React 17+ automatic
// runtime), which is all this example needs (no Fast Refresh).
// The hook imports ../resume/herald-resume.js (shared with the plain browser
// page, outside this app): the dev server may serve files from client-examples/.
export default defineConfig({
  base: './',
  esbuild: { jsx: 'automatic' },
  preview: { host: '127.0.0.1', port: 4173 },
  server: { host: '127.0.0.1', port: 5173, fs: { allow: ['..'] } },
});
