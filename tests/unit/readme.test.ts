/**
 * The README's commands, as a user copies them: every `npx pulumi-vfio ...` line of its shell blocks runs (in
 * order, in one project directory, against the fake lab machine, the shell's `~` expanded) and succeeds; every
 * synopsis line names a real command and its options; every `npm run <script>` exists. (The quoted host.yaml errors
 * are checked against the loader in hostDefinition.test.ts.)
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { utils as sshUtils } from "ssh2";
import { FakeHost, fakeLabKernel } from "../fake";
import { CliIO, COMMANDS, main } from "../../provider/cli";
import { packageRoot } from "../../provider/check";

const ROOT = packageRoot();
const README = fs.readFileSync(path.join(ROOT, "README.md"), "utf8");

/** The README's ```sh blocks, each as its lines without comments. */
function shellBlocks(text: string): string[][] {
    return (text.match(/```sh\n[\s\S]*?```/g) ?? []).map((b) =>
        b
            .split("\n")
            .slice(1, -1)
            .map((raw) => raw.replace(/\s+#.*$/, "").replace(/^#.*$/, "").trim())
            .filter(Boolean),
    );
}

const blocks = shellBlocks(README);
const cliLines = blocks.flat().filter((l) => l.startsWith("npx pulumi-vfio"));
/** A synopsis (`[--json]`, `FILE...`) documents a command; a concrete line can be run. */
const isSynopsis = (l: string) => /[[\]|]|\b[A-Z]{3,}\b/.test(l.replace(/^npx pulumi-vfio\s*/, ""));

test("the README shows the CLI at all (so the tests below test something)", () => {
    expect(cliLines.filter((l) => !isSynopsis(l)).length).toBeGreaterThanOrEqual(5);
    expect(cliLines.filter(isSynopsis).length).toBeGreaterThanOrEqual(4);
});

test.each(blocks.map((b, i) => [i + 1, b] as const).filter(([, b]) => b.some((l) => l.startsWith("npx pulumi-vfio") && !isSynopsis(l))))("shell block %d: every concrete `npx pulumi-vfio` line runs and succeeds, in order, in a fresh project", async (_n, block) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "pv-readme-"));
    const home = os.homedir();
    const key = sshUtils.generateKeyPairSync("ed25519").private;
    const host = new FakeHost(fakeLabKernel());
    let stdout = "";
    let stderr = "";
    const resolve = (p: string) => path.resolve(dir, p);
    const io: CliIO = {
        stdout: (t) => (stdout += t),
        stderr: (t) => (stderr += t),
        host: () => host,
        // The user's key, wherever the README says it is (~/.ssh/id_ed25519); every other file lives in the project.
        readFile: (p) => (p === path.join(home, ".ssh", "id_ed25519") ? key : fs.readFileSync(resolve(p), "utf8")),
        writeFile: (p, text, overwrite) => {
            fs.mkdirSync(path.dirname(resolve(p)), { recursive: true });
            fs.writeFileSync(resolve(p), text, { flag: overwrite ? "w" : "wx" });
        },
        env: {},
        cwd: dir,
    };
    const ran: string[] = [];
    try {
        for (const line of block.filter((l) => l.startsWith("npx pulumi-vfio") && !isSynopsis(l))) {
            const argv = line.replace(/^npx pulumi-vfio\s*/, "").split(/\s+/).filter(Boolean).map((w) => (w.startsWith("~/") ? path.join(home, w.slice(2)) : w));
            stdout = "";
            stderr = "";
            const code = await main(argv, io);
            if (code !== 0) throw new Error(`README: \`${line}\` exited ${code}: ${stderr}`);
            ran.push(line);
        }
    } finally {
        fs.rmSync(dir, { recursive: true, force: true });
    }
    expect(ran.length).toBeGreaterThan(0);
});

test("every synopsis line names a command and options it has", async () => {
    for (const line of cliLines.filter(isSynopsis)) {
        const words = line.replace(/^npx pulumi-vfio\s*/, "").split(/\s+/);
        const name = words[0];
        if (name === "help") {
            // `help` is the command line's own: it answers for every command.
            let out = "";
            const io = { stdout: (t: string) => (out += t), stderr: () => undefined, host: () => { throw new Error("no host"); }, readFile: () => "", env: {} } as unknown as CliIO;
            for (const c of Object.keys(COMMANDS)) expect(await main(["help", c], io)).toBe(0);
            expect(out).toContain("usage: pulumi-vfio init");
            continue;
        }
        expect({ line, known: name in COMMANDS }).toEqual({ line, known: true });
        const cmd = COMMANDS[name];
        const longs = [...line.matchAll(/--([a-z][a-z-]*)/g)].map((m) => m[1]).filter((o) => o !== "help");
        const shorts = [...line.matchAll(/(?:^|[\s[|])-([a-z])\b/g)].map((m) => m[1]);
        for (const o of longs) expect({ line, option: o, known: o in cmd.options }).toEqual({ line, option: o, known: true });
        for (const s of shorts) expect({ line, short: s, known: Object.values(cmd.options).some((o) => (o as { short?: string }).short === s) }).toEqual({ line, short: s, known: true });
    }
});

test("every `npm run` script the README names exists", () => {
    const scripts = JSON.parse(fs.readFileSync(path.join(ROOT, "package.json"), "utf8")).scripts as Record<string, string>;
    const named = [...README.matchAll(/npm run ([a-z][a-z:-]*)/g)].map((m) => m[1]);
    expect(named.length).toBeGreaterThan(3);
    for (const n of new Set(named)) expect({ script: n, exists: n in scripts }).toEqual({ script: n, exists: true });
    expect("test" in scripts).toBe(true);
});
