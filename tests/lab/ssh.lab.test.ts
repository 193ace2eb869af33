/**
 * The SSH host against the lab's real sshd: host key verification (both forms), one connection reused for every
 * batch, and errors that never carry a key or password.
 */
import { execFile } from "child_process";
import { createHash } from "crypto";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { SshHost } from "../../provider/host/ssh";
import { labSuite } from "./labState";

const { describe: labDescribe, lab } = labSuite();

labDescribe("SSH host on the lab", () => {
    let hostKeyLine = "";
    beforeAll(async () => {
        const r = await lab!.ssh(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"]);
        hostKeyLine = r.stdout.trim();
        expect(hostKeyLine).toMatch(/^ssh-ed25519 AAAA/);
    });

    test("the right host key (known_hosts form or SHA256 fingerprint) connects; batches share one connection", async () => {
        const fp = "SHA256:" + createHash("sha256").update(Buffer.from(hostKeyLine.split(/\s+/)[1], "base64")).digest("base64").replace(/=+$/, "");
        for (const hostKey of [hostKeyLine, fp]) {
            const host = new SshHost({ ...lab!.connection, hostKey });
            try {
                const r = await host.run([{ op: "read", path: "/etc/hostname" }]);
                expect(r[0].data.trim()).toBe("vfio-lab");
                await host.run([{ op: "read", path: "/proc/sys/kernel/osrelease" }]);
                expect(host.roundTrips).toBe(2);
            } finally {
                await host.close();
            }
        }
    });

    test("a different host key is refused, without retrying and without printing the private key", async () => {
        const wrong = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ8dIJ4w2bJ4o1b9yGqzr6b5Qm3q3PpAqD3mYxQ6lYbC";
        const host = new SshHost({ ...lab!.connection, hostKey: wrong });
        const err: Error = await host.run([{ op: "read", path: "/etc/hostname" }]).catch((e) => e);
        await host.close();
        expect(err.message).toMatch(/host key does not match connection.hostKey/);
        expect(err.message).not.toContain(lab!.connection.privateKey.split("\n")[1]);
    });

    test("a wrong password fails with the host named and the password nowhere in the message", async () => {
        const host = new SshHost({ host: lab!.connection.host, port: lab!.connection.port, user: "root", password: "hunter2-secret", hostKey: hostKeyLine, dialErrorLimit: 3 });
        const err: Error = await host.run([{ op: "read", path: "/etc/hostname" }]).catch((e) => e);
        await host.close();
        expect(err.message).toMatch(/cannot connect to root@127.0.0.1:\d+ over SSH/);
        expect(err.message).not.toContain("hunter2-secret");
    });

    test("the inventory CLI over SSH runs to the end in its own process and exits (the connection never holds it open)", async () => {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), "pv-cli-"));
        const key = path.join(dir, "id");
        fs.writeFileSync(key, lab!.connection.privateKey, { mode: 0o600 });
        try {
            const cli = path.resolve(__dirname, "../../dist/provider/cli.js");
            const target = `root@${lab!.connection.host}:${lab!.connection.port}`;
            const r = await new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) =>
                execFile(process.execPath, [cli, "inventory", "--ssh", target, "-i", key, "--host-key", hostKeyLine, "--json"], { timeout: 300_000 }, (err, stdout, stderr) =>
                    resolve({ code: err ? ((err as { code?: number }).code ?? null) : 0, stdout, stderr }),
                ),
            );
            expect(r.stderr).toBe("");
            expect(r.code).toBe(0);
            const inv = JSON.parse(r.stdout);
            expect(inv.iommu.enabled).toBe(true);
            expect(inv.groups.find((g: { members: string[] }) => g.members.includes("0000:01:00.0")).members).toEqual(["0000:01:00.0", "0000:01:00.1"]);
        } finally {
            fs.rmSync(dir, { recursive: true, force: true });
        }
    });
});
