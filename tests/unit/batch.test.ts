/**
 * The batch interpreter on this machine's real bash: values travel as data, never as shell text, and a write that
 * blocks is abandoned at its time limit.
 */
import { spawn, spawnSync } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { LOCK_LINGER_MS } from "../../provider/host/batch";
import { withHost } from "../../provider/host";
import { LocalHost } from "../../provider/host/local";
import { Host, assertSafePath, errnoFromMessage } from "../../provider/host/types";

const host = new LocalHost({ sudo: false });
let dir: string;
beforeAll(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), "pv-batch-"))));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

test("hostile values are written byte for byte and never run", async () => {
    const evil = `$(touch ${dir}/pwned) \`id\` 'quote" \\ \\x41 %s %n\nsecond line\ttab ünï`;
    const file = `${dir}/value`;
    const r = await host.run([
        { op: "put", path: file, data: evil, mode: 0o600 },
        { op: "read", path: file },
        { op: "exec", argv: ["printf", "%s", evil] },
    ]);
    expect(r.map((x) => x.ok)).toEqual([true, true, true]);
    expect(fs.readFileSync(file, "utf8")).toBe(evil);
    expect(r[2].data).toBe(evil);
    expect(fs.existsSync(`${dir}/pwned`)).toBe(false);
});

test("files are created with the mode asked for, atomically", async () => {
    // A 0644 file replaced by a 0600 one (and back): the mode is the put's, never the old file's.
    fs.writeFileSync(`${dir}/secret.conf`, "old\n", { mode: 0o644 });
    await host.run([{ op: "put", path: `${dir}/secret.conf`, data: "x\n", mode: 0o600 }]);
    expect(fs.statSync(`${dir}/secret.conf`).mode & 0o777).toBe(0o600);
    await host.run([{ op: "put", path: `${dir}/public.conf`, data: "y\n", mode: 0o644 }]);
    expect([fs.statSync(`${dir}/public.conf`).mode & 0o777, fs.readFileSync(`${dir}/public.conf`, "utf8")]).toEqual([0o644, "y\n"]);
    expect(fs.readdirSync(dir).filter((f) => f.includes(".pulumi-vfio."))).toEqual([]);
});

test("an inPlace put creates an absent file with one write and no process; one that exists is still replaced by rename", async () => {
    // A PATH with bash alone: any program the put needed (mv, chmod) would fail.
    const bin = fs.mkdtempSync(path.join(os.tmpdir(), "pv-bin-"));
    fs.symlinkSync(spawnSync("bash", ["-c", "command -v bash"], { encoding: "utf8" }).stdout.trim(), `${bin}/bash`);
    const bare = new LocalHost({ sudo: false, env: { PATH: bin } });
    try {
        const file = `${dir}/journal.json`;
        const [created] = await bare.run([{ op: "put", path: file, data: "{}\n", mode: 0o640, inPlace: true }]);
        expect(created.ok).toBe(true);
        expect([fs.statSync(file).mode & 0o777, fs.readFileSync(file, "utf8")]).toEqual([0o640, "{}\n"]);
        const [replaced] = await bare.run([{ op: "put", path: file, data: "new\n", mode: 0o640, inPlace: true }]);
        expect(replaced.ok).toBe(false);
        expect(fs.readFileSync(file, "utf8")).toBe("{}\n");
    } finally {
        await bare.close();
        fs.rmSync(bin, { recursive: true, force: true });
    }
});

test("a failed write reports the errno the kernel returned", async () => {
    const r = await host.run([{ op: "write", path: "/proc/self/oom_score_adj", data: "not-a-number" }]);
    expect(r[0].ok).toBe(false);
    expect(r[0].errno).toBe("EINVAL");
});

test("stopOnError stops at the first failed change and marks the rest skipped", async () => {
    const r = await host.run(
        [
            { op: "put", path: `${dir}/no/such/dir/file`, data: "x", mode: 0o644 },
            { op: "put", path: `${dir}/after`, data: "x", mode: 0o644 },
        ],
        { stopOnError: true },
    );
    expect(r[0].errno).toBe("ENOENT");
    expect(r[1].skipped).toBe(true);
    expect(fs.existsSync(`${dir}/after`)).toBe(false);
});

test("a read with an expectation guards the rest of a stopping batch: the same answer passes, another stops it", async () => {
    fs.writeFileSync(`${dir}/state`, "bochs-drm\n");
    fs.mkdirSync(`${dir}/members`);
    fs.writeFileSync(`${dir}/members/a`, "");
    fs.symlinkSync(`${dir}/members`, `${dir}/link`);
    const guards = [
        { op: "read", path: `${dir}/state`, expect: "bochs-drm" },
        { op: "readlink", path: `${dir}/link`, expect: fs.realpathSync(`${dir}/members`) },
        { op: "list", path: `${dir}/members`, expect: "a" },
        { op: "readlink", path: `${dir}/absent`, expect: "" },
    ] as const;
    const ok = await host.run([...guards, { op: "put", path: `${dir}/done`, data: "1", mode: 0o600 }], { stopOnError: true });
    expect(ok.map((x) => x.ok)).toEqual([true, true, true, true, true]);
    expect(ok[0].data).toBe("bochs-drm\n");

    fs.writeFileSync(`${dir}/state`, "vfio-pci\n");
    const stopped = await host.run([...guards, { op: "put", path: `${dir}/again`, data: "1", mode: 0o600 }], { stopOnError: true });
    expect(stopped[0]).toMatchObject({ ok: false, errno: "ESTALE", message: "found vfio-pci" });
    expect(stopped.slice(1).every((x) => x.skipped)).toBe(true);
    expect(fs.existsSync(`${dir}/again`)).toBe(false);
    // Without stopOnError a failed expectation is only reported.
    const reported = await host.run([guards[0], { op: "read", path: `${dir}/state` }]);
    expect(reported.map((x) => x.ok)).toEqual([false, true]);
});

test("an operation that blocks is abandoned at its limit and reported as ETIMEDOUT", async () => {
    const r = await host.run([{ op: "exec", argv: ["sleep", "30"], timeoutMs: 300 }, { op: "read", path: "/etc/hostname" }]);
    expect(r[0].errno).toBe("ETIMEDOUT");
    expect(r[0].message).toMatch(/did not finish within 300 ms/);
    expect(r[1].skipped).toBe(true);
});

test("reads of many files, links and directories come back in one round trip", async () => {
    fs.writeFileSync(`${dir}/a`, "1\n");
    fs.symlinkSync("../target/x", `${dir}/l`);
    fs.mkdirSync(`${dir}/sub`);
    fs.symlinkSync("sub", `${dir}/dirlink`);
    const before = host.roundTrips;
    const r = await host.run([{ op: "read", path: `${dir}/a` }, { op: "readlink", path: `${dir}/l` }, { op: "list", path: dir }, { op: "read", path: `${dir}/missing` }, { op: "openers", path: `${dir}/a` }, { op: "readlink", path: `${dir}/dirlink` }, { op: "readlink", path: `${dir}/a` }]);
    expect(host.roundTrips - before).toBe(1);
    expect(r[0].data).toBe("1\n");
    // Links come back canonical and absolute, whether the target exists (a directory, as in sysfs) or not.
    expect(r[1].data).toBe(path.resolve(dir, "../target/x"));
    expect(r[5].data).toBe(`${fs.realpathSync(dir)}/sub`);
    expect(r[6]).toMatchObject({ ok: false, errno: "EINVAL" });
    expect(r[2].data.split("\n")).toEqual(expect.arrayContaining(["a", "l"]));
    expect(r[3].errno).toBe("ENOENT");
    expect(r[4].ok).toBe(true);
});

test.each([["relative/path"], ["/sys/bus/pci/devices/../../../etc/shadow"], ["/tmp/a b"], ["/tmp/$(id)"], ["/tmp/x\ny"], ["/tmp/./x"]])("unsafe path %j never reaches the host", (p) =>
    expect(() => assertSafePath(p)).toThrow(/refusing unsafe path/));

test("errno names come from the strerror text a shell prints", () => {
    expect(errnoFromMessage("bash: line 12: printf: write error: No such device")).toBe("ENODEV");
    expect(errnoFromMessage("write error: Device or resource busy")).toBe("EBUSY");
    expect(errnoFromMessage("write error: Numerical result out of range")).toBe("ERANGE");
});

describe("one interpreter per host", () => {
    // An exec runs in a command substitution of the interpreter: the interpreter is its parent's parent.
    const pidOf = async (h: LocalHost) => (await h.run([{ op: "exec", argv: ["bash", "-c", "cut -d' ' -f4 /proc/$PPID/stat"] }]))[0].data.trim();
    /** A locked section that touches the host (the lock is taken with a section's first batch): "taken" once in. */
    const locked = (h: Host, ms: number) =>
        h.withLock(async (h) => {
            await h.run([{ op: "read", path: "/etc/hostname" }]);
            return "taken";
        }, ms);
    /** Whether the interpreter has perl for its lock helper (see batch.sh `helper`). */
    const perl = spawnSync("bash", ["-c", "hash perl"]).status === 0;
    /** Names of the interpreter's other children (besides the command substitution running this exec). */
    const helpers = async (h: Host) => {
        const script = "i=$(cut -d' ' -f4 /proc/$PPID/stat); for c in $(cat /proc/$i/task/*/children); do [ $c != $PPID ] && cat /proc/$c/comm; done; true";
        return (await h.run([{ op: "exec", argv: ["bash", "-c", script] }]))[0].data.split("\n").filter(Boolean);
    };

    test("batches reuse one process; after a batch stopped at a failure or an abandoned one, the next batch runs normally", async () => {
        const h = new LocalHost({ sudo: false });
        try {
            const first = await pidOf(h);
            const stopped = await h.run([{ op: "write", path: `${dir}/no/such/file`, data: "x" }, { op: "put", path: `${dir}/skipped`, data: "x", mode: 0o600 }], { stopOnError: true });
            expect(stopped.map((r) => r.skipped ?? false)).toEqual([false, true]);
            expect(await pidOf(h)).toBe(first);
            const [late] = await h.run([{ op: "exec", argv: ["sleep", "30"], timeoutMs: 200 }]);
            expect(late.errno).toBe("ETIMEDOUT");
            const [after] = await h.run([{ op: "read", path: `${dir}/a` }]);
            expect(after).toMatchObject({ ok: true, data: "1\n" });
            expect(await pidOf(h)).not.toBe(first);
            expect(fs.existsSync(`${dir}/skipped`)).toBe(false);
        } finally {
            await h.close();
        }
    });

    test("batches sent at the same time are answered each with its own results", async () => {
        const h = new LocalHost({ sudo: false });
        try {
            for (let i = 0; i < 20; i++) fs.writeFileSync(`${dir}/f${i}`, `value ${i}\n`);
            const all = await Promise.all(Array.from({ length: 20 }, (_, i) => h.run([{ op: "read", path: `${dir}/f${i}` }, { op: "exec", argv: ["printf", "%s", `exec ${i}`] }])));
            all.forEach((r, i) => expect(r.map((x) => x.data)).toEqual([`value ${i}\n`, `exec ${i}`]));
        } finally {
            await h.close();
        }
    });

    test("the host lock excludes another process, is not kept by a daemon started under it, and is free after", async () => {
        const a = new LocalHost({ sudo: false });
        const b = new LocalHost({ sudo: false });
        try {
            await a.withLock(async (a) => {
                const [d] = await a.run([{ op: "exec", argv: ["bash", "-c", "sleep 20 >/dev/null 2>&1 </dev/null & echo $!"] }]);
                daemon = Number(d.data.trim());
                // The lock rides on a section's first batch: when it cannot be taken, none of that batch runs.
                const write = b.withLock((b) => b.run([{ op: "put", path: `${dir}/unlocked`, data: "x", mode: 0o600 }]), 1000);
                await expect(write).rejects.toThrow(/could not take the host lock \/run\/lock\/pulumi-vfio\.lock: timed out after 1 s/);
                expect(fs.existsSync(`${dir}/unlocked`)).toBe(false);
            });
            // Held a little longer (LOCK_LINGER_MS) for a next section of the same program, then free for the other,
            // whose section of one batch is one round trip, the lock's included.
            const before = b.roundTrips;
            expect(await locked(b, LOCK_LINGER_MS + 8_000)).toBe("taken");
            expect(b.roundTrips - before).toBe(1);
            expect(fs.statSync("/run/lock/pulumi-vfio.lock").mode & 0o777).toBe(0o600);
        } finally {
            if (daemon) process.kill(daemon);
            await Promise.all([a.close(), b.close()]);
        }
    });
    let daemon = 0;

    test("only the host a locked section receives takes the lock, and it refuses batches once the section is over", async () => {
        const a = new LocalHost({ sudo: false });
        const b = new LocalHost({ sudo: false });
        const c = new LocalHost({ sudo: false });
        let kept: Host | undefined;
        try {
            await a.withLock(async (inside) => {
                kept = inside;
                // The host outside the section is other work of the program: its batches leave the lock free.
                await a.run([{ op: "read", path: "/etc/hostname" }]);
                expect(await locked(b, 1000)).toBe("taken");
                await b.close();
                await inside.run([{ op: "read", path: "/etc/hostname" }]);
                await expect(locked(c, 1000)).rejects.toThrow(/timed out after 1 s/);
            });
            await expect(kept!.run([{ op: "read", path: "/etc/hostname" }])).rejects.toThrow(/after the section ended, so without the host lock/);
        } finally {
            await Promise.all([a.close(), b.close(), c.close()]);
        }
    });

    test("two operations of one program on the same host take turns under the lock", async () => {
        const h = new LocalHost({ sudo: false });
        const log: string[] = [];
        const section = (name: string) =>
            h.withLock(async (h) => {
                log.push(`${name} in`);
                await h.run([{ op: "exec", argv: ["sleep", "0.2"] }]);
                log.push(`${name} out`);
            });
        try {
            await Promise.all([section("one"), section("two")]);
            expect(log).toEqual(["one in", "one out", "two in", "two out"]);
        } finally {
            await h.close();
        }
    });

    test("a program killed while it holds the host lock leaves the host unlocked", async () => {
        const lib = path.resolve(__dirname, "../../dist/provider/host/local.js");
        const program = `const { LocalHost } = require(${JSON.stringify(lib)}); const h = new LocalHost({ sudo: false });
            h.withLock(async (h) => { await h.run([{ op: "read", path: "/etc/hostname" }]); console.log("held"); await new Promise(() => setInterval(() => undefined, 1000)); });`;
        const child = spawn(process.execPath, ["-e", program], { stdio: ["ignore", "pipe", "inherit"] });
        await new Promise<void>((resolve) => child.stdout!.on("data", (d: Buffer) => d.toString().includes("held") && resolve()));
        const other = new LocalHost({ sudo: false });
        try {
            await expect(locked(other, 1000)).rejects.toThrow(/timed out after 1 s/);
            child.kill("SIGKILL");
            expect(await locked(other, 10_000)).toBe("taken");
        } finally {
            child.kill("SIGKILL");
            await other.close();
        }
    });

    test("the lock is held by the interpreter's own helper (perl, where there is perl) or its own descriptor: no other process stays behind, and it is free once the interpreter ends", async () => {
        const a = new LocalHost({ sudo: false });
        const b = new LocalHost({ sudo: false });
        try {
            await a.withLock(async (a) => {
                await a.run([{ op: "read", path: "/etc/hostname" }]);
                expect(await helpers(a)).toEqual(perl ? ["perl"] : []);
                await expect(locked(b, 1000)).rejects.toThrow(/timed out after 1 s/);
            });
            await a.close();
            expect(await locked(b, LOCK_LINGER_MS + 8_000)).toBe("taken");
        } finally {
            await Promise.all([a.close(), b.close()]);
        }
    });

    test("a lock helper killed on its own ends its interpreter: the section's next batch fails unrun, the next section takes the lock anew", async () => {
        const a = new LocalHost({ sudo: false });
        const b = new LocalHost({ sudo: false });
        try {
            await a.withLock(async (a) => {
                await a.run([{ op: "read", path: "/etc/hostname" }]);
                const kill = "i=$(cut -d' ' -f4 /proc/$PPID/stat); for c in $(cat /proc/$i/task/*/children); do [ \"$(cat /proc/$c/comm)\" = perl ] && kill -9 $c; done; true";
                await a.run([{ op: "exec", argv: ["bash", "-c", kill] }]);
                await new Promise((r) => setTimeout(r, 200));
                if (perl) {
                    await expect(a.run([{ op: "put", path: `${dir}/unlocked`, data: "x", mode: 0o600 }])).rejects.toThrow(/lock helper \(perl\) went away/);
                    expect(fs.existsSync(`${dir}/unlocked`)).toBe(false);
                }
            });
            expect(await locked(a, 1000)).toBe("taken");
            await a.withLock(async (a) => {
                await a.run([{ op: "read", path: "/etc/hostname" }]);
                await expect(locked(b, 1000)).rejects.toThrow(/timed out after 1 s/);
            });
        } finally {
            await Promise.all([a.close(), b.close()]);
        }
    });

    test("a program whose work is done exits although its host is still open", () => {
        const lib = path.resolve(__dirname, "../../dist/provider/host/local.js");
        const program = `const { LocalHost } = require(${JSON.stringify(lib)}); const h = new LocalHost({ sudo: false });
            h.run([{ op: "read", path: "/etc/hostname" }]).then((r) => console.log(r[0].ok ? "read" : "failed"));`;
        const r = spawnSync(process.execPath, ["-e", program], { encoding: "utf8", timeout: 30_000 });
        expect(r.error).toBeUndefined();
        expect(r.stdout.trim()).toBe("read");
        expect(r.status).toBe(0);
    });
});

test("openers names the processes holding a file; groupHolders of a device without an IOMMU group is empty", async () => {
    const file = `${dir}/held`;
    fs.writeFileSync(file, "x");
    const holder = spawn("bash", ["-c", `exec 5<"$1"; exec sleep 30`, "holder", file], { stdio: "ignore" });
    try {
        await new Promise((r) => setTimeout(r, 300));
        const r = await host.run([{ op: "openers", path: file }, { op: "groupHolders", path: dir, guard: true }]);
        expect(r[0].data.split("\n").filter(Boolean).map(Number)).toContain(holder.pid);
        expect(r[1]).toMatchObject({ ok: true, data: "" });
    } finally {
        holder.kill();
    }
});

test("operations of one program on the same machine share one host (one connection, one interpreter); another login gets its own", async () => {
    const local1 = await withHost(null, async (h) => h);
    const local2 = await withHost(undefined, async (h) => h);
    expect(local2).toBe(local1);
    // SSH hosts connect on first use only: these never dial.
    const ssh1 = await withHost({ host: "192.0.2.7", user: "root", privateKey: "key-a" }, async (h) => h);
    const ssh2 = await withHost({ host: "192.0.2.7", user: "root", privateKey: "key-a" }, async (h) => h);
    const other = await withHost({ host: "192.0.2.7", user: "root", privateKey: "key-b" }, async (h) => h);
    expect(ssh2).toBe(ssh1);
    expect(other).not.toBe(ssh1);
    expect(ssh1.name).toBe("root@192.0.2.7:22");
});
