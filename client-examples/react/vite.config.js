import { defineConfig } from 'vite';

// No @vitejs/plugin-react: esbuild compiles the JSX (React 17+ automatic
// runtime), which is all this example needs (no Fast Refresh).
export default defineConfig({
  base: './',
  esbuild: { jsx: 'automatic' },
  preview: { host: '127.0.0.1', port: 4173 },
  server: { host: '127.0.0.1', port: 5173 },
});
