// The console is embedded in the patchbay binary (runtime/build.rs copies dist/ into it), so
// the build has fixed file names and no hashed chunks: one HTML, one script, one stylesheet.
import { defineConfig } from "vite";

export default defineConfig({
  base: "/",
  oxc: { jsx: { runtime: "automatic", importSource: "preact" } },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2022",
    assetsInlineLimit: 0,
    modulePreload: false,
    rollupOptions: {
      output: {
        entryFileNames: "console.js",
        chunkFileNames: "console-[name].js",
        assetFileNames: "console[extname]",
        inlineDynamicImports: true,
      },
    },
  },
});
