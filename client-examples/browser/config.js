// The herald URL used when the page has no ?herald= parameter.
// serve.mjs answers /config.js with the value of $HERALD_URL instead of this file.
window.HERALD_CONFIG = { heraldUrl: 'http://localhost:3000' };
