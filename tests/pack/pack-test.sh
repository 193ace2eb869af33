#!/usr/bin/env bash
# `npm run test:pack`: what a user gets from the package, tried as a user would. Packs this repository with
# `npm pack` (its lifecycle scripts build dist/), checks the tarball's file list, installs the tarball into a fresh
# project together with @pulumi/pulumi from the npm registry, and there runs the CLI and a plain-JS program that
# declares an IommuBinding under pulumi.runtime.setMocks. Needs no root, no lab VM and no Pulumi CLI.
#
# Environment: PACK_TEST_PULUMI (the @pulumi/pulumi version the project installs; default: the lowest our
# peerDependencies range admits, which is not the version our own tests pin, so a package that brings its own copy
# is caught), PACK_TEST_KEEP=1 (keep the temporary directory and say where it is).
set -euo pipefail
cd "$(dirname "$0")/../.."
START=$(date +%s)
log() { printf '[test:pack %3ss] %s\n' "$(($(date +%s) - START))" "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/pulumi-vfio-pack.XXXXXX")
if [ "${PACK_TEST_KEEP:-}" = 1 ]; then trap 'log "kept $WORK"' EXIT; else trap 'rm -rf "$WORK"' EXIT; fi

PULUMI_VERSION=${PACK_TEST_PULUMI:-$(node -p 'require("./package.json").peerDependencies["@pulumi/pulumi"].replace(/^[\^~>=\s]+/, "")')}
[[ "$PULUMI_VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || fail "cannot take a version from the @pulumi/pulumi peer range: $PULUMI_VERSION"
VERSION=$(node -p 'require("./package.json").version')

# --- 1. pack ----------------------------------------------------------------------------------------------
log "npm pack"
npm pack --json --pack-destination "$WORK" > "$WORK/pack.json" 2> "$WORK/pack.log" \
  || { cat "$WORK/pack.log" >&2; fail "npm pack failed"; }
TARBALL="$WORK/$(node -p 'require(process.argv[1])[0].filename' "$WORK/pack.json")"
[ -f "$TARBALL" ] || fail "npm pack wrote no tarball"

# --- 2. what is in it ---------------------------------------------------------------------------------------
node - "$WORK/pack.json" <<'JS' || fail "the tarball's file list is wrong (above)"
const files = require(process.argv[2])[0].files.map((f) => f.path);
const problems = [];
for (const need of ["package.json", "README.md", "LICENSE", "dist/provider/cli.js", "dist/provider/index.js",
    "dist/sdk/index.js", "dist/sdk/index.d.ts", "schema/host.schema.json", "schema/common.schema.json"]) {
    if (!files.includes(need)) problems.push(`missing ${need}`);
}
// Test code, the fake kernel/QEMU and the root program are not part of the package.
for (const f of files) {
    if (/(^|\/)tests?\//.test(f) || /fake/i.test(f) || f.startsWith("dist/program/")) problems.push(`must not contain ${f}`);
}
if (!files.some((f) => f.startsWith("dist/provider/sysfs/"))) problems.push("no dist/provider/sysfs/ (the kernel ABI)");
// Every compiled file has its source: nothing left in dist/ by an older build of a file since moved or deleted.
for (const f of files) {
    const m = /^dist\/(.*?)(\.d\.ts|\.js\.map|\.js)$/.exec(f);
    if (m && !require("fs").existsSync(`${m[1]}.ts`)) problems.push(`${f} has no source ${m[1]}.ts (a stale build output)`);
}
for (const p of problems) console.error(`  ${p}`);
console.error(`  ${files.length} files`);
process.exit(problems.length ? 1 : 0);
JS
log "tarball ok: $(basename "$TARBALL")"

# --- 3. a fresh project with the tarball and @pulumi/pulumi from the registry ----------------------------------
APP="$WORK/app"
mkdir "$APP"
printf '{ "name": "pack-test-app", "version": "0.0.0", "private": true }\n' > "$APP/package.json"
log "npm install the tarball and @pulumi/pulumi@$PULUMI_VERSION into a fresh project"
( cd "$APP" && npm install --no-audit --no-fund "$TARBALL" "@pulumi/pulumi@$PULUMI_VERSION" ) > "$WORK/install.log" 2>&1 \
  || { tail -n 30 "$WORK/install.log" >&2; fail "npm install of the tarball failed"; }

cd "$APP"
# One @pulumi/pulumi in the project: a second copy nested under pulumi-vfio would keep its own runtime state
# (the mocks, the resource monitor) and break dynamic resources and instanceof checks.
copies=$(npm ls @pulumi/pulumi --all --parseable | sort -u)
[ "$(printf '%s\n' "$copies" | grep -c .)" -eq 1 ] && [ "$copies" = "$APP/node_modules/@pulumi/pulumi" ] \
  || fail "expected exactly one @pulumi/pulumi at $APP/node_modules/@pulumi/pulumi, npm ls found: ${copies:-none}"
# @pulumi/command's install script downloads a Pulumi plugin: it must not come with us.
[ -z "$(npm ls @pulumi/command --all --parseable)" ] || fail "@pulumi/command was installed with pulumi-vfio"
log "one @pulumi/pulumi, no @pulumi/command"

# --- 4. the CLI -------------------------------------------------------------------------------------------------
help=$(npx --no -- pulumi-vfio --help) || fail "npx pulumi-vfio --help failed"
grep -q '^usage: pulumi-vfio' <<<"$help" || fail "npx pulumi-vfio --help printed no usage: $help"
if grep -q -- '--version' <<<"$help"; then
  v=$(npx --no -- pulumi-vfio --version) || fail "npx pulumi-vfio --version failed"
  grep -qF "$VERSION" <<<"$v" || fail "npx pulumi-vfio --version printed \"$v\", expected $VERSION"
  log "CLI ok (--help, --version $VERSION)"
else
  log "CLI ok (--help; its usage lists no --version)"
fi

# --- 5. a program under mocks -----------------------------------------------------------------------------------
cat > program.js <<'JS'
"use strict";
const assert = require("assert");
const Module = require("module");
const path = require("path");
const pulumi = require("@pulumi/pulumi");

const registered = [];
pulumi.runtime.setMocks(
    {
        newResource(args) {
            registered.push(args);
            return { id: `${args.name}-id`, state: { ...args.inputs, address: "0000:01:00.0", group: 7, vfioDevice: "/dev/vfio/7" } };
        },
        call(args) {
            return args.inputs;
        },
    },
    "pack-test",
    "dev",
    false,
);
// After setMocks, so the resource registers with the mock monitor.
const vfio = require("pulumi-vfio");
const value = (o) => new Promise((resolve) => o.apply(resolve));

(async () => {
    const gpu = new vfio.IommuBinding("gpu", { device: "0000:01:00.0" });
    assert.strictEqual(await value(gpu.vfioDevice), "/dev/vfio/7");
    await value(gpu.urn);
    const r = registered.find((x) => x.name === "gpu");
    assert.ok(r, "the IommuBinding was not registered");
    assert.strictEqual(r.type, "pulumi-nodejs:dynamic/vfio:IommuBinding");
    assert.strictEqual(r.inputs.device, "0000:01:00.0");

    // The provider stored in state, loaded as the dynamic-provider plugin loads it (a module compiled from the
    // string, resolving packages from the project): its check must reach the packed implementation and its packed
    // schemas, and refuse a malformed address on `device` without touching any host.
    const mod = new Module(path.join(process.cwd(), "__provider.js"));
    mod.filename = mod.id;
    mod.paths = Module._nodeModulePaths(process.cwd());
    mod._compile(String(r.inputs.__provider), mod.filename);
    const provider = mod.exports.handler();
    const checked = await provider.check({}, { device: "01:00.0x" });
    assert.ok(checked.failures.length > 0 && checked.failures[0].property === "device", `check of a bad address: ${JSON.stringify(checked.failures)}`);
    const impl = require.resolve("pulumi-vfio/provider");
    assert.ok(impl.startsWith(path.join(process.cwd(), "node_modules", "pulumi-vfio", "dist") + path.sep), `pulumi-vfio/provider resolved to ${impl}`);
    console.log(`registered ${r.type}; check refused device: ${checked.failures[0].reason}`);
})().catch((e) => {
    console.error(e);
    process.exit(1);
});
JS
out=$(node program.js 2>&1) || { printf '%s\n' "$out" >&2; fail "the program under mocks failed"; }
log "program ok: $out"
log "passed"
