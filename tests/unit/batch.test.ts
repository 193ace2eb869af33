/**
 * The batch interpreter on this machine's real bash: values travel as data, never as shell text, and a write that
 * blocks is abandoned at its time limit.
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { LocalHost } from "../../provider/host/local";
import { assertSafePath, errnoFromMessage } from "../../provider/host/types";

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
    await host.run([{ op: "put", path: `${dir}/secret.conf`, data: "x\n", mode: 0o600 }]);
    expect(fs.statSync(`${dir}/secret.conf`).mode & 0o777).toBe(0o600);
    expect(fs.readdirSync(dir).filter((f) => f.includes(".pulumi-vfio."))).toEqual([]);
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

test("an operation that blocks is abandoned at its limit and reported as ETIMEDOUT", async () => {
    const r = await host.run([{ op: "exec", argv: ["sleep", "30"], timeoutMs: 300 }, { op: "read", path: "/etc/hostname" }]);
    expect(r[0].errno).toBe("ETIMEDOUT");
    expect(r[0].message).toMatch(/did not finish within 300 ms/);
    expect(r[1].skipped).toBe(true);
});

test("reads of many files, links and directories come back in one round trip", async () => {
    fs.writeFileSync(`${dir}/a`, "1\n");
    fs.symlinkSync("../target/x", `${dir}/l`);
    const before = host.roundTrips;
    const r = await host.run([{ op: "read", path: `${dir}/a` }, { op: "readlink", path: `${dir}/l` }, { op: "list", path: dir }, { op: "read", path: `${dir}/missing` }, { op: "openers", path: `${dir}/a` }]);
    expect(host.roundTrips - before).toBe(1);
    expect(r[0].data).toBe("1\n");
    expect(r[1].data).toBe("../target/x");
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
