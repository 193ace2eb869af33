/**
 * KvmfrDevice on the lab host, which is like every Debian host: no distribution ships the kvmfr module. Preview
 * and up must fail with the message that tells how to install Looking Glass's DKMS module, and change nothing.
 * (The module handling itself is tested on the fake kernel; the QEMU side with a /dev/shm buffer in vm.lab.test.ts.)
 */
import { SshHost } from "../../provider/host/ssh";
import { check, create } from "../../provider/kvmfrDevice";
import { labSuite } from "./labState";

const { describe: labDescribe, lab } = labSuite();

labDescribe("KvmfrDevice on the lab kernel (no kvmfr module)", () => {
    const l = lab!;
    let host: SshHost;
    beforeAll(() => {
        host = new SshHost(l.connection);
    });
    afterAll(async () => {
        await host.close();
    });

    test("preview and up fail with how to install the DKMS module; nothing is written", async () => {
        const release = (await l.ssh(["uname", "-r"])).stdout.trim();
        const c = await check({}, { index: 0, width: 1920, height: 1080 }, host);
        expect(c.inputs.sizeMb).toBe(32);
        expect(c.failures).toHaveLength(1);
        expect(c.failures[0].property).toBe("connection");
        expect(c.failures[0].reason).toBe(
            `the kvmfr kernel module is not installed on ${host.name} (modprobe cannot find it for kernel ${release}). ` +
                "No distribution ships it; install Looking Glass's DKMS module: install dkms and the headers of the running kernel " +
                "(apt install dkms linux-headers-$(uname -r)), download the Looking Glass source matching your client from " +
                "https://looking-glass.io/downloads, then run `dkms install .` in its module/ directory " +
                "(https://looking-glass.io/docs/stable/ivshmem_kvmfr/). Without it, give PassthroughVm a /dev/shm file as sharedMemory instead",
        );
        await expect(create({ index: 0, sizeMb: 32 }, host)).rejects.toThrow(/the kvmfr kernel module is not installed/);
        expect((await l.ssh(["test", "-e", "/etc/modprobe.d/kvmfr.conf"])).code).not.toBe(0);
        expect((await l.ssh(["test", "-e", "/etc/udev/rules.d/99-kvmfr.rules"])).code).not.toBe(0);
    });
});
