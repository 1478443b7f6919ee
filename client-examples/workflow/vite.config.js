import { defineConfig } from 'vite';

// As client-examples/react: esbuild compiles the JSX (React 17+ automatic
// runtime); no plugin needed for a page without Fast Refresh.
export default defineConfig({
  base: './',
  esbuild: { jsx: 'automatic' },
  preview: { host: '127.0.0.1', port: 4175 },
  // The styles import the React example's (outside this app): the dev server may serve client-examples/.
  server: { host: '127.0.0.1', port: 5175, fs: { allow: ['..'] } },
});
