// A jest transformer: strips the suite's TypeScript types with esbuild (no type checking,
// which ts-jest would add together with typescript itself).
const esbuild = require("esbuild");

module.exports = {
  process(source, filename) {
    const { code } = esbuild.transformSync(source, {
      loader: "ts",
      format: "cjs",
      target: "node20",
      sourcefile: filename,
      sourcemap: "inline",
      // jest runs CommonJS without --experimental-vm-modules: the suite's `await import(...)`
      // must become a require.
      supported: { "dynamic-import": false },
    });
    return { code };
  },
};
