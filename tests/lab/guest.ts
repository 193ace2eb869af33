/**
 * Running pulumi-vfio's provider inside the lab guest, where the guest is the *local* host: the compiled provider,
 * its schemas and its runtime dependencies are copied to /opt/pulumi-vfio, and calls go through a small runner that
 * reads `{impl, fn, args}` as JSON on stdin and answers `{result}` or `{error}` on stdout.
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import type { LabHandle } from "./lab";

const REPO = path.resolve(__dirname, "..", "..").replace(/[\\/]dist$/, "");
export const GUEST_DIR = "/opt/pulumi-vfio";

/** The production dependency closure of the provider (not @pulumi/*: provider/ knows nothing of the engine). */
function closure(roots: string[]): string[] {
    const seen = new Set<string>();
    const visit = (name: string) => {
        if (seen.has(name)) return;
        const pj = path.join(REPO, "node_modules", name, "package.json");
        if (!fs.existsSync(pj)) return;
        seen.add(name);
        const meta = JSON.parse(fs.readFileSync(pj, "utf8"));
        for (const dep of Object.keys({ ...(meta.dependencies ?? {}), ...(meta.optionalDependencies ?? {}) })) visit(dep);
    };
    roots.forEach(visit);
    return [...seen].sort();
}

const RUNNER = `
const provider = require("${GUEST_DIR}/dist/provider");
let input = "";
process.stdin.on("data", (d) => (input += d));
process.stdin.on("end", async () => {
    const { impl, fn, args } = JSON.parse(input);
    try {
        const result = await provider[impl][fn](...args);
        process.stdout.write(JSON.stringify({ result: result === undefined ? null : result }));
    } catch (e) {
        process.stdout.write(JSON.stringify({ error: String(e && e.message || e) }));
    }
});
`;

const installed = new WeakSet<object>();

/** Copy the provider into the guest (once per lab handle). */
export async function installProvider(lab: LabHandle): Promise<void> {
    if (installed.has(lab)) return;
    const stage = fs.mkdtempSync(path.join(os.tmpdir(), "pv-guest-"));
    try {
        const pkg = path.join(stage, "pulumi-vfio");
        fs.mkdirSync(path.join(pkg, "dist"), { recursive: true });
        fs.cpSync(path.join(REPO, "dist", "provider"), path.join(pkg, "dist", "provider"), { recursive: true });
        fs.cpSync(path.join(REPO, "schema"), path.join(pkg, "schema"), { recursive: true });
        fs.copyFileSync(path.join(REPO, "package.json"), path.join(pkg, "package.json"));
        // The package's own runtime dependencies, as package.json lists them (a new one must not be forgotten here).
        const roots = Object.keys(JSON.parse(fs.readFileSync(path.join(REPO, "package.json"), "utf8")).dependencies ?? {});
        for (const dep of closure(roots)) {
            fs.cpSync(path.join(REPO, "node_modules", dep), path.join(pkg, "node_modules", dep), { recursive: true, dereference: true });
        }
        fs.writeFileSync(path.join(pkg, "runner.js"), RUNNER);
        await lab.ssh(["rm", "-rf", GUEST_DIR]);
        await lab.copyTo(pkg, "/opt");
        const r = await lab.ssh(["node", "-e", `require("${GUEST_DIR}/dist/provider"); console.log("ok")`]);
        if (r.code !== 0 || !r.stdout.includes("ok")) throw new Error(`provider does not load in the guest: ${r.stderr}`);
        installed.add(lab);
    } finally {
        fs.rmSync(stage, { recursive: true, force: true });
    }
}

/** Call `provider[impl][fn](...args)` inside the guest against its local host. Rejects with the provider's error. */
export async function guestCall<T = any>(lab: LabHandle, impl: string, fn: string, args: unknown[]): Promise<T> {
    await installProvider(lab);
    const r = await lab.ssh(["node", `${GUEST_DIR}/runner.js`], { input: JSON.stringify({ impl, fn, args }), timeoutMs: 180_000 });
    if (r.code !== 0) throw new Error(`guest runner failed (${r.code}): ${r.stderr}`);
    const out = JSON.parse(r.stdout);
    if ("error" in out) throw new Error(out.error);
    return out.result as T;
}
