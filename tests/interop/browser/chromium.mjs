// The headless Chromium the browser suites drive: Debian's (/usr/bin/chromium,
// or $CHROMIUM_BIN), through playwright-core, which downloads no browser.

import { chromium } from 'playwright-core';

export const CHROMIUM_BIN = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

/** Launches headless Chromium with the flags a container needs. */
export function launchChromium() {
  return chromium.launch({
    executablePath: CHROMIUM_BIN,
    headless: true,
    timeout: 20000,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-sync'],
  });
}
