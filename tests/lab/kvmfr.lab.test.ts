/**
 * KvmfrDevice on the lab host, which is like every Debian host: no distribution ships the kvmfr module. Preview
 * and up must fail with the message that tells how to install Looking Glass's DKMS module, and change nothing.
 * (The module handling itself is tested on the fake kernel; the QEMU side with a /dev/shm buffer in vm.lab.test.ts.)
 * `libvirt: true`'s host setup is proven on the lab's real libvirt 9.0 (Debian 12): its preview lines, the
 * cgroup_device_acl libvirtd restarts with, and delete's byte-equal qemu.conf.
 */
import { SshHost } from "../../provider/host/ssh";
import { check, create } from "../../provider/kvmfrDevice";
import { LIBVIRT_OPS, OUR_ACL_MARK, QEMU_CONF, libvirtOps, parseLibvirtFacts, planLibvirt } from "../../provider/libvirt/qemuConf";
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

labDescribe("KvmfrDevice libvirt: true on the lab's libvirt", () => {
    const l = lab!;
    let host: SshHost;
    const sh = async (script: string) => {
        const r = await l.ssh(["sh", "-c", script], { timeoutMs: 300_000 });
        if (r.code !== 0) throw new Error(`${script}: exit ${r.code}: ${r.stderr}`);
        return r.stdout;
    };
    const mainPid = async () => (await sh("systemctl show -p MainPID --value libvirtd.service")).trim();
    beforeAll(() => {
        host = new SshHost(l.connection);
    });
    afterAll(async () => {
        await host.close();
    });

    test("preview names qemu.conf's new lines and the restart; libvirtd restarts with them and still serves qemu:///system; delete gives the file back byte for byte", async () => {
        const before = await sh(`cat ${QEMU_CONF}`);
        // The preview of a KvmfrDevice (which fails here for want of the module) already shows libvirt's part.
        const c = await check({}, { index: 0, sizeMb: 32, libvirt: true }, host);
        expect(c.inputs.plan).toEqual(expect.arrayContaining([`${QEMU_CONF}: + ${OUR_ACL_MARK}`, `${QEMU_CONF}: +     "/dev/kvmfr0",`, "run: systemctl try-restart libvirtd.service (only if it is running: qemu.conf is read at its start)"]));
        expect(await sh(`cat ${QEMU_CONF}`)).toBe(before);

        // libvirtd is socket-activated on the lab: a client starts it, so try-restart has something to restart.
        await sh("virsh -c qemu:///system version >/dev/null");
        const pid0 = await mainPid();
        const facts = parseLibvirtFacts(await host.run(LIBVIRT_OPS));
        // AppArmor is on in the kernel, but no libvirt profile is loaded (no apparmor package): libvirt does not use it.
        expect(facts).toMatchObject({ apparmorConfined: false, units: ["libvirtd.service"] });
        const add = planLibvirt(facts, "/dev/kvmfr0", true, undefined);
        expect(add.problems).toEqual([]);
        const r = await host.run(libvirtOps(add), { stopOnError: true });
        expect(r.filter((x) => !x.ok)).toEqual([]);
        const text = await sh(`cat ${QEMU_CONF}`);
        // Debian 12's libvirt 9.0 documents its built-in list without /dev/userfaultfd: that commented copy is the one kept.
        expect(text.slice(before.length)).toBe(
            [OUR_ACL_MARK, "cgroup_device_acl = [", '    "/dev/kvmfr0",', ...["/dev/null", "/dev/full", "/dev/zero", "/dev/random", "/dev/urandom", "/dev/ptmx", "/dev/kvm"].map((d) => `    "${d}",`), "]", ""].join("\n"),
        );
        const pid1 = await mainPid();
        expect(pid1).not.toBe(pid0);
        expect(await sh("systemctl is-active libvirtd.service")).toBe("active\n");
        expect(await sh("virsh -c qemu:///system version")).toMatch(/Running hypervisor: QEMU/);

        const back = planLibvirt(parseLibvirtFacts(await host.run(LIBVIRT_OPS)), "/dev/kvmfr0", false, add.added);
        expect((await host.run(libvirtOps(back), { stopOnError: true })).filter((x) => !x.ok)).toEqual([]);
        expect(await sh(`cat ${QEMU_CONF}`)).toBe(before);
        expect(await mainPid()).not.toBe(pid1);
        expect(await sh("virsh -c qemu:///system version")).toMatch(/Running hypervisor: QEMU/);
    }, 600_000);
});
