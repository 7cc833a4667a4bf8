'use strict'
// The CommonJS entry is the ES module itself, loaded with require(esm) (Node 22.12+): CommonJS and
// ESM users of one process share one copy of the plugin and its module-level state, never two.
module.exports = require('./dist/index.js')
