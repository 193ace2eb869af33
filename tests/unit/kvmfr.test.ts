/**
 * KvmfrDevice: Looking Glass's sizing formulas, the shared static_size_mb array, the udev rule, and the provider on
 * the fake kernel's kvmfr module — what a user sees on preview, up, refresh and destroy.
 */
import { FakeHost } from "../fake/host";
import { FakeKernel } from "../fake/kernel";
import { installKvmfr, kvmfr } from "../fake/kvmfr";
import { fakeLabKernel } from "../fake/lab";
import { check, create, diff, read, remove, update } from "../../provider/kvmfrDevice";
import { kvmfrSizeMb, mergeSize, mergeUdevRules, parseModprobeConf, removeSize } from "../../provider/sysfs/kvmfr";

describe("Looking Glass's shared-memory size", () => {
    // B7: w*h*bpp*2 bytes in MiB + 10, next power of two (install_libvirt.rst's table: 1080p 32/64, 1440p 64/128, 4K 128/256).
    describe.each([
        [1920, 1080, false, 32],
        [1920, 1200, false, 32],
        [2560, 1440, false, 64],
        [3840, 2160, false, 128],
        [1920, 1080, true, 64],
        [2560, 1440, true, 128],
        [3840, 2160, true, 256],
    ])("B7 formula: %i×%i hdr=%s", (w, h, hdr, mb) => {
        test(`→ ${mb} MiB`, () => expect(kvmfrSizeMb(w, h, hdr, "b7")).toBe(mb));
    });
    // Current: ceil(w*4/256)*256*h*3 + 4 MiB, next power of two.
    describe.each([
        [1920, 1080, false, 32],
        [2560, 1440, false, 64],
        [3840, 2160, false, 128],
        [1366, 768, false, 32],
    ])("current formula: %i×%i hdr=%s", (w, h, hdr, mb) => {
        test(`→ ${mb} MiB`, () => expect(kvmfrSizeMb(w, h, hdr, "current")).toBe(mb));
    });
    test("a nonsense resolution is refused with the values", () => {
        expect(() => kvmfrSizeMb(0, 1080)).toThrow(/positive integer width and height, got 0×1080/);
    });
});

describe("the static_size_mb array every KvmfrDevice shares", () => {
    test.each([
        [[], 0, 32, [32]],
        [[32], 1, 64, [32, 64]],
        [[32, 64], 0, 128, [128, 64]],
    ])("%j: kvmfr%i = %i MiB → %j", (cur, index, size, want) => {
        expect(mergeSize(cur as number[], index as number, size as number)).toEqual({ sizes: want });
    });
    test("a gap is refused: kvmfr numbers devices by position", () => {
        expect(mergeSize([], 2, 32).gap).toMatch(/\/dev\/kvmfr2 needs kvmfr0, kvmfr1 first: declare a KvmfrDevice for each of them and make this one dependOn it/);
    });
    test("only the last entry can be dropped; a middle one stays", () => {
        expect(removeSize([32, 64], 1)).toEqual([32]);
        expect(removeSize([32, 64], 0)).toEqual([32, 64]);
    });
    test("modprobe.d parsing follows modprobe: comments ignored, the last options line wins", () => {
        expect(parseModprobeConf("# options kvmfr static_size_mb=1\noptions kvmfr static_size_mb=32\noptions kvmfr static_size_mb=64,128\n")).toEqual([64, 128]);
        expect(parseModprobeConf(undefined)).toEqual([]);
    });
    test("udev rules: one line per device, others kept, sorted by device", () => {
        const one = mergeUdevRules(undefined, 1, { owner: "alice", group: "kvm", mode: "0660" });
        const two = mergeUdevRules(one, 0, { owner: "root", group: "kvm", mode: "0660" });
        expect(two.split("\n").filter((l) => l.startsWith("SUBSYSTEM"))).toEqual([
            'SUBSYSTEM=="kvmfr", KERNEL=="kvmfr0", OWNER="root", GROUP="kvm", MODE="0660"',
            'SUBSYSTEM=="kvmfr", KERNEL=="kvmfr1", OWNER="alice", GROUP="kvm", MODE="0660"',
        ]);
        expect(mergeUdevRules(mergeUdevRules(two, 0, undefined), 1, undefined)).toBe("");
    });
});

describe("KvmfrDevice on a host", () => {
    let k: FakeKernel;
    let host: FakeHost;
    beforeEach(() => {
        k = fakeLabKernel();
        host = new FakeHost(k);
    });

    async function up(inputs: Record<string, unknown>) {
        const c = await check({}, inputs, host);
        expect(c.failures).toEqual([]);
        return create(c.inputs, host);
    }

    test("a host without the kvmfr module fails at preview, telling how to install Looking Glass's DKMS module", async () => {
        const c = await check({}, { index: 0, sizeMb: 32 }, host);
        expect(c.failures).toHaveLength(1);
        expect(c.failures[0].property).toBe("connection");
        expect(c.failures[0].reason).toMatch(/the kvmfr kernel module is not installed on fake \(modprobe cannot find it for kernel 6\.1\.0-fake-amd64\)/);
        expect(c.failures[0].reason).toMatch(/dkms install \./);
        await expect(create({ index: 0, sizeMb: 32 }, host)).rejects.toThrow(/kvmfr kernel module is not installed/);
        expect(k.state.files["/etc/modprobe.d/kvmfr.conf"]).toBeUndefined();
    });

    test("create writes the three files (0644), loads the module and hands back a char device with the rule's permissions", async () => {
        installKvmfr(k);
        const { id, outs } = await up({ index: 0, width: 1920, height: 1080 });
        expect(id).toBe("kvmfr0");
        expect(k.read("/etc/modprobe.d/kvmfr.conf")).toMatch(/^options kvmfr static_size_mb=32$/m);
        expect(k.read("/etc/modules-load.d/kvmfr.conf")).toMatch(/^kvmfr$/m);
        expect(k.read("/etc/udev/rules.d/99-kvmfr.rules")).toMatch(/^SUBSYSTEM=="kvmfr", KERNEL=="kvmfr0", OWNER="root", GROUP="kvm", MODE="0660"$/m);
        for (const f of ["/etc/modprobe.d/kvmfr.conf", "/etc/modules-load.d/kvmfr.conf", "/etc/udev/rules.d/99-kvmfr.rules"]) expect(k.state.files[f].mode).toBe(0o644);
        expect(k.stat("/dev/kvmfr0")).toMatch(/^character special file 660 0 104 /);
        expect(outs).toMatchObject({ path: "/dev/kvmfr0", sizeMb: 32, sizeBytes: 33554432, group: "kvm", mode: "0660", actual: { kind: "char", sizeMb: 32 } });
        expect(outs.qemuArgs).toEqual(["-object", "memory-backend-file,id=looking-glass,mem-path=/dev/kvmfr0,size=32M,share=yes", "-device", "ivshmem-plain,id=shmem0,memdev=looking-glass"]);
    });

    test("a second device merges into the same array; the module is reloaded while nothing holds a device", async () => {
        installKvmfr(k);
        await up({ index: 0, sizeMb: 32 });
        const { outs } = await up({ index: 1, sizeMb: 64, owner: "alice" });
        expect(k.read("/etc/modprobe.d/kvmfr.conf")).toMatch(/static_size_mb=32,64/);
        expect(kvmfr(k).sizes).toEqual([32, 64]);
        expect(k.stat("/dev/kvmfr1")).toMatch(/^character special file 660 1000 104 /);
        expect(outs.qemuArgs[1]).toBe("memory-backend-file,id=looking-glass1,mem-path=/dev/kvmfr1,size=64M,share=yes");
    });

    test("a reload is refused while a VM holds any /dev/kvmfr*, naming it; nothing changes", async () => {
        installKvmfr(k);
        await up({ index: 0, sizeMb: 32 });
        k.hold("/dev/kvmfr0", "qemu-system-x86");
        const c = await check({}, { index: 1, sizeMb: 64 }, host);
        expect(c.failures.map((f) => f.reason).join()).toMatch(/a reload removes every \/dev\/kvmfr\* device, but \/dev\/kvmfr0 is held open by PID \d+. Stop the VMs that use Looking Glass first/);
        const err = await create({ index: 1, sizeMb: 64 }, host).catch((e) => e);
        expect(err.message).toMatch(/held open by PID (\d+).*\(PID \1 \(qemu-system-x86\)\)/);
        expect(k.read("/etc/modprobe.d/kvmfr.conf")).toMatch(/static_size_mb=32$/m);
        expect(kvmfr(k).sizes).toEqual([32]);
    });

    test("a regular file at /dev/kvmfr0 (QEMU started before the module) is detected and explained", async () => {
        installKvmfr(k);
        k.put("/dev/kvmfr0", "", 0o644);
        const c = await check({}, { index: 0, sizeMb: 32 }, host);
        expect(c.failures[0]).toMatchObject({ property: "index" });
        expect(c.failures[0].reason).toMatch(/\/dev\/kvmfr0 is a regular file.*QEMU started before the kvmfr module was loaded.*delete \/dev\/kvmfr0/);
    });

    test.each([
        [{ index: 0, sizeMb: 48 }, "sizeMb", /48 is not a power of two/],
        [{ index: 0, sizeMb: 32, width: 1920, height: 1080 }, "sizeMb", /either sizeMb or width\/height/],
        [{ index: 0 }, "sizeMb", /sizeMb is required, or width and height/],
        [{ index: 0, width: 1920 }, "height", /width and height go together/],
        [{ index: 0, sizeMb: 32, mode: "0666" }, "mode", /other-writable/],
        // Other-readable is refused too: any local user could read the guest's framebuffer (issue 15).
        [{ index: 0, sizeMb: 32, mode: "0664" }, "mode", /mode 0664 lets every local user read the guest's framebuffer \(other-readable\); use "0660"/],
        [{ index: 0, sizeMb: 32, mode: "644" }, "mode", /other-readable/],
        [{ index: 0, sizeMb: 32, mode: "rw" }, "mode", /"rw" is not a valid mode\. Octal mode .* For example: "0660"/],
        [{ index: 10, sizeMb: 32 }, "index", /must be <= 9/],
        [{ index: 0, sizeMb: 32, owner: 'x", MODE="0666' }, "owner", /not a user\/group name/],
        [{ index: 0, sizeMb: 32, group: "nosuchgroup" }, "group", /group "nosuchgroup" does not exist/],
    ])("bad input %j fails at preview on %s", async (inputs, property, reason) => {
        installKvmfr(k);
        const c = await check({}, inputs, host);
        const f = c.failures.find((x) => x.property === property);
        expect(f?.reason).toMatch(reason);
    });

    test("index 1 before index 0: preview says it waits for kvmfr0 (declared in the same program); up refuses the gap", async () => {
        installKvmfr(k);
        const c = await check({}, { index: 1, sizeMb: 32 }, host);
        expect(c.failures).toEqual([]);
        expect(c.inputs.plan![0]).toMatch(/kvmfr1 needs the devices below it first \(another KvmfrDevice this one dependsOn\)/);
        await expect(create(c.inputs, host)).rejects.toThrow(/\/dev\/kvmfr1 needs kvmfr0 first: declare a KvmfrDevice for it and make this one dependOn it/);
        expect(k.state.files["/etc/modprobe.d/kvmfr.conf"]).toBeUndefined();
    });

    test("refresh sees permissions changed by hand; the next up repairs them", async () => {
        installKvmfr(k);
        const { id, outs } = await up({ index: 0, sizeMb: 32 });
        k.exec(["chmod", "0666", "/dev/kvmfr0"]);
        const r = await read(id, outs, host);
        expect(r.props!.actual.mode).toBe("0666");
        const c = await check(outs, { index: 0, sizeMb: 32 }, host);
        expect(diff(id, r.props!, c.inputs).changes).toBe(true);
        const u = await update(id, r.props!, c.inputs, host);
        expect(u.outs.actual.mode).toBe("0660");
        expect(diff(id, u.outs, c.inputs).changes).toBe(false);
    });

    test("resizing reloads the module; an unchanged device is no change", async () => {
        installKvmfr(k);
        const { id, outs } = await up({ index: 0, sizeMb: 32 });
        const same = await check(outs, { index: 0, sizeMb: 32 }, host);
        expect(diff(id, outs, same.inputs)).toEqual({ changes: false, replaces: [], deleteBeforeReplace: true });
        const bigger = await check(outs, { index: 0, width: 2560, height: 1440 }, host);
        expect(bigger.inputs.sizeMb).toBe(64);
        expect(diff(id, outs, bigger.inputs).changes).toBe(true);
        const u = await update(id, outs, bigger.inputs, host);
        expect(u.outs.actual.sizeMb).toBe(64);
        expect(kvmfr(k).sizes).toEqual([64]);
        expect(diff(id, outs, { index: 1, sizeMb: 32 }).replaces).toEqual(["index"]);
    });

    test("delete refuses while the device is open, then removes files and unloads the module", async () => {
        installKvmfr(k);
        const { id, outs } = await up({ index: 0, sizeMb: 32 });
        const pid = k.hold("/dev/kvmfr0", "qemu-system-x86");
        await expect(remove(id, outs, host)).rejects.toThrow(/refusing to remove \/dev\/kvmfr0: it is held open by PID \d+ \(qemu-system-x86\)/);
        k.release(pid);
        await remove(id, outs, host);
        expect(k.state.files["/etc/modprobe.d/kvmfr.conf"]).toBeUndefined();
        expect(k.state.files["/etc/udev/rules.d/99-kvmfr.rules"]).toBeUndefined();
        expect(kvmfr(k).loaded).toBe(false);
        expect((await read(id, outs, host)).id).toBe("");
    });

    test("deleting the last of two devices shrinks the array and reloads; the other keeps its size", async () => {
        installKvmfr(k);
        await up({ index: 0, sizeMb: 32 });
        const second = await up({ index: 1, sizeMb: 64 });
        await remove(second.id, second.outs, host);
        expect(k.read("/etc/modprobe.d/kvmfr.conf")).toMatch(/static_size_mb=32$/m);
        expect(kvmfr(k).sizes).toEqual([32]);
        expect(k.read("/etc/udev/rules.d/99-kvmfr.rules")).not.toMatch(/kvmfr1/);
    });

    test("reading costs at most two round trips", async () => {
        installKvmfr(k);
        const { id, outs } = await up({ index: 0, sizeMb: 32 });
        const before = host.roundTrips;
        await read(id, outs, host);
        expect(host.roundTrips - before).toBeLessThanOrEqual(2);
    });
});
