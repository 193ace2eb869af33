/**
 * The SSH host against the lab's real sshd: host key verification (both forms), one connection reused for every
 * batch, and errors that never carry a key or password.
 */
import { createHash } from "crypto";
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
        const host = new SshHost({ host: lab!.connection.host, port: lab!.connection.port, user: "root", password: "hunter2-secret", dialErrorLimit: 3 });
        const err: Error = await host.run([{ op: "read", path: "/etc/hostname" }]).catch((e) => e);
        await host.close();
        expect(err.message).toMatch(/cannot connect to root@127.0.0.1:\d+ over SSH/);
        expect(err.message).not.toContain("hunter2-secret");
    });
});
