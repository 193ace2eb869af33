/**
 * KvmfrDevice `libvirt: true`: Looking Glass's libvirt host setup (qemu.conf's cgroup_device_acl, AppArmor's local
 * abstraction) merged with what the user has, taken back exactly on delete, libvirtd restarted only when qemu.conf
 * changed and it runs; on the fake machine's Debian 12 libvirt files.
 */
import { FakeHost } from "../fake/host";
import { FakeKernel } from "../fake/kernel";
import { installKvmfr } from "../fake/kvmfr";
import { fakeLabKernel } from "../fake/lab";
import { STOCK_QEMU_CONF, installLibvirt, libvirt } from "../fake/libvirtHost";
import { KvmfrDeviceOutputs, check, create, diff, read, remove, update } from "../../provider/kvmfrDevice";
import { DEFAULT_DEVICE_ACL, OUR_ACL_MARK, withDevice, withoutDevice } from "../../provider/libvirt/qemuConf";

const QEMU_CONF = "/etc/libvirt/qemu.conf";
const LOCAL = "/etc/apparmor.d/local/abstractions/libvirt-qemu";
const added = (r: ReturnType<typeof withDevice>) => {
    if ("problem" in r) throw new Error(r.problem);
    return r.text;
};
const USER_LIST = ['cgroup_device_acl = [', '    "/dev/null", "/dev/full", "/dev/zero",', '    "/dev/random", "/dev/urandom",', '    "/dev/ptmx", "/dev/kvm", "/dev/nvidia0"', "]", ""].join("\n");

describe("cgroup_device_acl in qemu.conf", () => {
    test("without a setting: a marked one of ours with the installed libvirt's default list (its commented copy) plus the device; removed byte for byte", () => {
        const text = added(withDevice(STOCK_QEMU_CONF, "/dev/kvmfr0"));
        expect(text.startsWith(STOCK_QEMU_CONF)).toBe(true);
        expect(text.slice(STOCK_QEMU_CONF.length)).toBe(
            [OUR_ACL_MARK, "cgroup_device_acl = [", '    "/dev/kvmfr0",', ...["/dev/null", "/dev/full", "/dev/zero", "/dev/random", "/dev/urandom", "/dev/ptmx", "/dev/kvm"].map((d) => `    "${d}",`), "]", ""].join("\n"),
        );
        expect(withoutDevice(text, "/dev/kvmfr0")).toBe(STOCK_QEMU_CONF);
    });

    test("without the commented copy either: the list libvirt's qemu.conf.in documents", () => {
        const text = added(withDevice("#user = \"qemu\"\n", "/dev/kvmfr0"));
        for (const d of DEFAULT_DEVICE_ACL) expect(text).toContain(`    "${d}",\n`);
        expect(DEFAULT_DEVICE_ACL).toEqual(expect.arrayContaining(["/dev/kvm", "/dev/userfaultfd", "/dev/ptmx"]));
    });

    test("the user's own list gets one line of ours after its opening line; every line of theirs stays as it was", () => {
        const conf = STOCK_QEMU_CONF + USER_LIST;
        const text = added(withDevice(conf, "/dev/kvmfr1"));
        const lines = text.split("\n");
        expect(lines.filter((l) => !conf.split("\n").includes(l))).toEqual(['    "/dev/kvmfr1",']);
        expect(lines.indexOf('    "/dev/kvmfr1",')).toBe(lines.indexOf("cgroup_device_acl = [") + 1);
        expect(withoutDevice(text, "/dev/kvmfr1")).toBe(conf);
    });

    test("a device the user already listed is left alone, and nothing is taken back", () => {
        const conf = USER_LIST.replace('"/dev/nvidia0"', '"/dev/kvmfr0"');
        expect(withDevice(conf, "/dev/kvmfr0")).toEqual({ text: conf, added: false });
    });

    test("a list on one line cannot take a line without rewriting the user's: refused, naming the line", () => {
        const r = withDevice('user = "qemu"\ncgroup_device_acl = [ "/dev/null", "/dev/kvm" ]\n', "/dev/kvmfr0");
        expect(r).toEqual({ problem: expect.stringMatching(/^\/etc\/libvirt\/qemu\.conf line 2: cgroup_device_acl's list starts on the same line.*add "\/dev\/kvmfr0" yourself and set libvirt: false$/) });
    });

    test("two devices in our list: it stays until the last one goes, then the file is as before", () => {
        const both = added(withDevice(added(withDevice(STOCK_QEMU_CONF, "/dev/kvmfr0")), "/dev/kvmfr1"));
        const one = withoutDevice(both, "/dev/kvmfr0");
        expect(one).toContain('    "/dev/kvmfr1",');
        expect(one).toContain(OUR_ACL_MARK);
        expect(withoutDevice(one, "/dev/kvmfr1")).toBe(STOCK_QEMU_CONF);
    });
});

describe("KvmfrDevice libvirt: true on a host", () => {
    let k: FakeKernel;
    let host: FakeHost;
    beforeEach(() => {
        k = fakeLabKernel();
        installKvmfr(k);
        host = new FakeHost(k);
    });
    const file = (p: string) => k.state.files[p]?.data;

    async function up(inputs: Record<string, unknown>): Promise<KvmfrDeviceOutputs> {
        const c = await check({}, inputs, host);
        expect(c.failures).toEqual([]);
        return (await create(c.inputs, host)).outs;
    }

    test("preview shows qemu.conf's new lines and the restart and writes nothing; up makes libvirtd read them; destroy puts the file back byte for byte", async () => {
        installLibvirt(k);
        const c = await check({}, { index: 0, sizeMb: 32, libvirt: true }, host);
        expect(c.failures).toEqual([]);
        expect(c.inputs.plan).toEqual(expect.arrayContaining([`${QEMU_CONF}: + ${OUR_ACL_MARK}`, `${QEMU_CONF}: + cgroup_device_acl = [`, `${QEMU_CONF}: +     "/dev/kvmfr0",`, "run: systemctl try-restart libvirtd.service (only if it is running: qemu.conf is read at its start)"]));
        expect(file(QEMU_CONF)).toBe(STOCK_QEMU_CONF);
        expect(libvirt(k).restarts).toBe(0);

        const outs = (await create(c.inputs, host)).outs;
        expect(libvirt(k)).toMatchObject({ running: true, restarts: 1, acl: ["/dev/kvmfr0", "/dev/null", "/dev/full", "/dev/zero", "/dev/random", "/dev/urandom", "/dev/ptmx", "/dev/kvm"] });
        expect(outs.libvirtAdded).toEqual({ acl: true, apparmor: false });
        // AppArmor does not confine this libvirtd: its local abstraction is not touched.
        expect(file(LOCAL)).toBe("");

        await remove("kvmfr0", outs, host);
        expect(file(QEMU_CONF)).toBe(STOCK_QEMU_CONF);
        expect(libvirt(k)).toMatchObject({ restarts: 2, acl: undefined });
    });

    test("where AppArmor confines libvirt, Looking Glass's rule goes to the local abstraction and comes out again", async () => {
        installLibvirt(k, { apparmor: true });
        const outs = await up({ index: 0, sizeMb: 32, libvirt: true });
        expect(file(LOCAL)).toBe("/dev/kvmfr0 rw,\n");
        expect(outs.libvirtAdded).toEqual({ acl: true, apparmor: "line" });
        await remove("kvmfr0", outs, host);
        expect(file(LOCAL)).toBe("");
    });

    test("libvirtd not running (socket-activated): the file is written, nothing restarted", async () => {
        installLibvirt(k, { running: false });
        await up({ index: 0, sizeMb: 32, libvirt: true });
        expect(file(QEMU_CONF)).toContain('    "/dev/kvmfr0",');
        expect(libvirt(k).restarts).toBe(0);
        expect(k.state.execLog).toContainEqual(["systemctl", "try-restart", "libvirtd.service"]);
    });

    test("a libvirtd that does not come back puts qemu.conf and the kvmfr files back, naming the command and its error", async () => {
        installLibvirt(k);
        libvirt(k).failRestart = "Job for libvirtd.service failed because the control process exited with error code.";
        const c = await check({}, { index: 0, sizeMb: 32, libvirt: true }, host);
        const err = await create(c.inputs, host).catch((e) => e);
        expect(err.message).toMatch(/systemctl try-restart libvirtd\.service.*Job for libvirtd\.service failed.*The kvmfr files were restored/);
        expect(file(QEMU_CONF)).toBe(STOCK_QEMU_CONF);
        expect(file("/etc/modprobe.d/kvmfr.conf")).toBeUndefined();
    });

    test("libvirt turned off takes our line out; a hand edit that took it out is drift up repairs", async () => {
        installLibvirt(k, { qemuConf: STOCK_QEMU_CONF + USER_LIST });
        const outs = await up({ index: 0, sizeMb: 32, libvirt: true });
        k.state.files[QEMU_CONF].data = STOCK_QEMU_CONF + USER_LIST;
        const r = await read("kvmfr0", outs, host);
        expect(r.props!.actual.libvirt).toBe(false);
        expect(diff("kvmfr0", r.props!, { index: 0, sizeMb: 32, libvirt: true }).changes).toBe(true);
        const again = (await update("kvmfr0", r.props!, { index: 0, sizeMb: 32, libvirt: true }, host)).outs;
        expect(file(QEMU_CONF)).toContain('    "/dev/kvmfr0",');
        const off = (await update("kvmfr0", again, { index: 0, sizeMb: 32, libvirt: false }, host)).outs;
        expect(file(QEMU_CONF)).toBe(STOCK_QEMU_CONF + USER_LIST);
        expect(off.libvirtAdded).toEqual({ acl: false, apparmor: false });
    });

    test("a host without libvirt's QEMU driver is refused at preview", async () => {
        const c = await check({}, { index: 0, sizeMb: 32, libvirt: true }, host);
        expect(c.failures).toEqual([{ property: "libvirt", reason: expect.stringMatching(/\/etc\/libvirt\/qemu\.conf does not exist: libvirt's QEMU driver is not installed/) }]);
    });
});
