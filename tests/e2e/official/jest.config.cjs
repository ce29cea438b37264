// Jest settings for the vendored official suite (README.md beside this file).
module.exports = {
  rootDir: __dirname,
  testMatch: ["<rootDir>/client.test.ts"],
  testEnvironment: "node",
  // TypeScript to CommonJS with esbuild, already a dependency, instead of ts-jest + typescript.
  transform: { "\\.ts$": "<rootDir>/esbuild-transform.cjs" },
  // Upstream's own mapping: the suite imports "./helpers.js", which is helpers.ts here.
  moduleNameMapper: { "^(\\.{1,2}/.*)\\.js$": "$1" },
  // esbuild takes milliseconds; a transform cache would outlive changes to the transformer.
  cache: false,
};
