// ES modules, one output file per source module: the app's own modules land at the top of dist/src and the
// @microsoft/ccf-app modules it imports under dist/src/node_modules/, imported by relative paths.
import { nodeResolve } from "@rollup/plugin-node-resolve";

export default {
  input: "src/endpoints.js",
  output: {
    dir: "dist/src",
    format: "es",
    preserveModules: true,
    preserveModulesRoot: "src",
  },
  plugins: [nodeResolve()],
};
