/**
 * IommuBinding's provider functions on the fake kernel: what a user sees on preview, up, refresh and destroy,
 * including the failures (rollback, IOMMU off, persistence without driverctl) and the cost in round trips.
 */
import { FakeHost } from "../fake/host";
import { fakeKernelWithoutIommu, fakeLabKernel } from "../fake/lab";
import { pci } from "../fake/pci";
import { system } from "../fake/system";
import { FakeKernel } from "../fake/kernel";
import { Op } from "../../provider/host/types";
import { IommuBindingOutputs, check, create, diff, read, remove, update } from "../../provider/iommuBinding";

let k: FakeKernel;
let host: FakeHost;
const dev = (a: string) => pci(k).devices[a];
beforeEach(() => {
    k = fakeLabKernel();
    host = new FakeHost(k);
});

/** The HDMI audio function moved to vfio-pci by hand, as driverctl or a wiki's `echo` lines do. */
const audioToVfioByHand: Op[] = [
    { op: "exec", argv: ["modprobe", "vfio-pci"] },
    { op: "write", path: "/sys/bus/pci/drivers/snd_hda_intel/unbind", data: "0000:01:00.1" },
    { op: "write", path: "/sys/bus/pci/devices/0000:01:00.1/driver_override", data: "vfio-pci" },
    { op: "write", path: "/sys/bus/pci/drivers_probe", data: "0000:01:00.1" },
];

async function up(inputs: Record<string, unknown>) {
    const c = await check({}, inputs, host);
    expect(c.failures).toEqual([]);
    return create(c.inputs, host);
}

test("create binds both functions of the group and reports what destroy will restore", async () => {
    const { id, outs } = await up({ device: "0000:01:00.0" });
    expect(id).toBe("0000:01:00.0");
    expect(dev("0000:01:00.0")).toMatchObject({ driver: "vfio-pci", override: "vfio-pci" });
    expect(dev("0000:01:00.1")).toMatchObject({ driver: "vfio-pci", override: "vfio-pci" });
    expect(k.list("/dev/vfio")).toContain("7");
    expect(outs).toMatchObject({ group: 7, vfioDevice: "/dev/vfio/7", driver: "vfio-pci", wholeGroup: true });
    expect(outs.members.map((m) => m.previousDriver)).toEqual(["bochs-drm", "snd_hda_intel"]);
    // vfio-pci was not loaded: create loaded it.
    expect(k.state.execLog).toContainEqual(["modprobe", "vfio_pci"]);
});

test("a host driver that refuses to let go midway: the first member is restored exactly, and the error says why", async () => {
    k.injectFault("/sys/bus/pci/drivers/snd_hda_intel/unbind", "EBUSY");
    const c = await check({}, { device: "01:00.0" }, host);
    const err: Error = await create(c.inputs, host).catch((e) => e);
    expect(err.message).toMatch(/writing "0000:01:00.1" to \/sys\/bus\/pci\/drivers\/snd_hda_intel\/unbind failed: EBUSY \(Device or resource busy\)/);
    expect(err.message).toMatch(/Every changed device was restored \(0000:01:00.0 → bochs-drm/);
    expect(dev("0000:01:00.0")).toMatchObject({ driver: "bochs-drm", override: null });
    expect(dev("0000:01:00.1")).toMatchObject({ driver: "snd_hda_intel", override: null });
    expect(k.list("/dev/vfio")).not.toContain("7");
});

test("a member that drivers_probe leaves unbound gets one explicit bind before anything is rolled back", async () => {
    // lxd#12128: drivers_probe answers EINVAL and leaves the device unbound with the override in place.
    k.injectFault("/sys/bus/pci/drivers_probe", "EINVAL", "0000:01:00.1");
    const { outs } = await up({ device: "01:00.0" });
    expect(outs.members.map((m) => m.driver)).toEqual(["vfio-pci", "vfio-pci"]);
});

test("persistent: true writes driverctl's files (0644) and destroy removes them", async () => {
    const { id, outs } = await up({ device: "01:00.0", persistent: true });
    expect(k.read("/etc/driverctl.d/pci-0000:01:00.0")).toBe("vfio-pci\n");
    expect(k.read("/etc/driverctl.d/pci-0000:01:00.1")).toBe("vfio-pci\n");
    expect(k.state.files["/etc/driverctl.d/pci-0000:01:00.0"].mode).toBe(0o644);
    // Turning persistence off is an in-place update that removes them.
    expect(diff(id, outs, { ...outs, persistent: false })).toEqual({ changes: true, replaces: [], deleteBeforeReplace: true });
    const { outs: o2 } = await update(id, outs, { ...outs, persistent: false }, host);
    expect(k.state.files["/etc/driverctl.d/pci-0000:01:00.0"]).toBeUndefined();
    expect(o2.persistent).toBe(false);
    await remove(id, o2, host);
    expect(dev("0000:01:00.0").driver).toBe("bochs-drm");
});

test("a driverctl override the host had before (the user's own) survives create and destroy with persistent: false", async () => {
    // As `driverctl set-override 0000:01:00.1 vfio-pci` leaves it: bound, overridden, and saved for boot.
    await host.run([
        ...audioToVfioByHand,
        { op: "mkdir", path: "/etc/driverctl.d", mode: 0o755 },
        { op: "put", path: "/etc/driverctl.d/pci-0000:01:00.1", data: "vfio-pci\n", mode: 0o644 },
    ]);
    const { id, outs } = await up({ device: "01:00.0" });
    expect(k.read("/etc/driverctl.d/pci-0000:01:00.1")).toBe("vfio-pci\n");
    await remove(id, outs, host);
    expect(k.read("/etc/driverctl.d/pci-0000:01:00.1")).toBe("vfio-pci\n");
    expect([dev("0000:01:00.0").driver, dev("0000:01:00.1").driver, dev("0000:01:00.1").override]).toEqual(["bochs-drm", "vfio-pci", "vfio-pci"]);
});

test("persistent: true on a host without driverctl fails at preview with the fix", async () => {
    delete k.state.files["/usr/sbin/driverctl"];
    const c = await check({}, { device: "01:00.0", persistent: true }, host);
    expect(c.failures).toEqual([{ property: "persistent", reason: expect.stringMatching(/needs driverctl on the host.*install it/) }]);
});

test("a host with the IOMMU off fails at preview with the kernel command line fix", async () => {
    host = new FakeHost(fakeKernelWithoutIommu());
    const c = await check({}, { device: "01:00.0" }, host);
    expect(c.failures[0].property).toBe("device");
    expect(c.failures[0].reason).toMatch(/IOMMU is off.*intel_iommu=on iommu=pt.*amd_iommu=on/);
});

test("refresh: a removed device is gone; a member back on its host driver shows as drift that diff asks to repair", async () => {
    const { id, outs } = await up({ device: "01:00.0" });
    dev("0000:01:00.1").driver = "snd_hda_intel";
    const r = await read(id, outs, host);
    expect(r.props!.members[1].driver).toBe("snd_hda_intel");
    expect(diff(id, r.props as IommuBindingOutputs, outs).changes).toBe(true);
    expect(diff(id, outs, outs).changes).toBe(false);
    delete pci(k).devices["0000:01:00.0"];
    expect(await read(id, outs, host)).toEqual({ id: "" });
});

test("a group seen once is read in one round trip; create after check is one batch, the lock's included; delete one batch", async () => {
    const first = host.roundTrips;
    const c = await check({}, { device: "01:00.0" }, host);
    // The first look learns the member list, then reads the other members.
    expect(host.roundTrips - first).toBe(2);
    const before = host.roundTrips;
    const { outs } = await create(c.inputs, host);
    // One batch: the lock, guards (group not held, same members, same drivers and overrides), writes, read-back.
    expect(host.roundTrips - before).toBe(1);
    expect(outs.members.map((m) => [m.previousDriver, m.driver])).toEqual([
        ["bochs-drm", "vfio-pci"],
        ["snd_hda_intel", "vfio-pci"],
    ]);
    const r0 = host.roundTrips;
    await read("0000:01:00.0", outs, host);
    expect(host.roundTrips - r0).toBe(1);
    const d0 = host.roundTrips;
    await remove("0000:01:00.0", outs, host);
    expect(host.roundTrips - d0).toBe(1);
    expect(pci(k).devices["0000:01:00.1"].driver).toBe("snd_hda_intel");
});

test("delete after drift (members moved by hand since the last refresh) still restores every member exactly", async () => {
    const c = await check({}, { device: "01:00.0" }, host);
    const { outs } = await create(c.inputs, host);
    // By hand: the audio function back on its host driver (override cleared), the GPU unbound altogether.
    await host.run([
        { op: "write", path: "/sys/bus/pci/drivers/vfio-pci/unbind", data: "0000:01:00.1" },
        { op: "write", path: "/sys/bus/pci/devices/0000:01:00.1/driver_override", data: "\n" },
        { op: "write", path: "/sys/bus/pci/drivers/snd_hda_intel/bind", data: "0000:01:00.1" },
        { op: "write", path: "/sys/bus/pci/drivers/vfio-pci/unbind", data: "0000:01:00.0" },
    ]);
    await remove("0000:01:00.0", outs, host);
    const d = pci(k).devices;
    expect([d["0000:01:00.0"].driver, d["0000:01:00.0"].override, d["0000:01:00.1"].driver, d["0000:01:00.1"].override]).toEqual(["bochs-drm", null, "snd_hda_intel", null]);
});

test("a member moved by hand between preview and up: create acts on the host as it is, and destroy restores that", async () => {
    const c = await check({}, { device: "01:00.0" }, host);
    // After check: the audio function unbound by hand.
    await host.run([{ op: "write", path: "/sys/bus/pci/drivers/snd_hda_intel/unbind", data: "0000:01:00.1" }]);
    const before = host.roundTrips;
    const { outs } = await create(c.inputs, host);
    // The guarded batch stopped before any write; the group was read under the lock and bound from that.
    expect(host.roundTrips - before).toBe(3);
    expect(outs.members.map((m) => [m.previousDriver, m.driver])).toEqual([
        ["bochs-drm", "vfio-pci"],
        [null, "vfio-pci"],
    ]);
    await remove(outs.address, outs, host);
    expect([dev("0000:01:00.0").driver, dev("0000:01:00.1").driver]).toEqual(["bochs-drm", null]);
    // The next create after check plans from what this program last did, and is one batch again.
    const again = host.roundTrips;
    await create(c.inputs, host);
    expect(host.roundTrips - again).toBe(1);
    expect(dev("0000:01:00.1").driver).toBe("vfio-pci");
});

test("a VM that opened the group between preview and up: create refuses, naming the PID, and changes nothing", async () => {
    // The audio function is already on vfio-pci, so /dev/vfio/7 exists; check sees nobody holding it.
    await host.run(audioToVfioByHand);
    const c = await check({}, { device: "01:00.0" }, host);
    expect(c.failures).toEqual([]);
    const pid = k.hold("/dev/vfio/7");
    const err: Error = await create(c.inputs, host).catch((e) => e);
    expect(err.message).toMatch(new RegExp(`IOMMU group 7 is in use: /dev/vfio/7 is held open by PID ${pid}`));
    expect([dev("0000:01:00.0").driver, dev("0000:01:00.0").override]).toEqual(["bochs-drm", null]);
});

test("a group whose membership changed since it was last seen is still read whole", async () => {
    const c = await check({}, { device: "01:00.0" }, host);
    // A third function appears in the group after check (hot-plug): create must see it and bind it too.
    const audio = pci(k).devices["0000:01:00.1"];
    pci(k).devices["0000:01:00.2"] = { ...audio, address: "0000:01:00.2" };
    const { outs } = await create(c.inputs, host);
    expect(outs.members.map((m) => [m.address, m.driver])).toEqual([
        ["0000:01:00.0", "vfio-pci"],
        ["0000:01:00.1", "vfio-pci"],
        ["0000:01:00.2", "vfio-pci"],
    ]);
});

test("diff: another device or host replaces (releasing first); driver and persistence update in place", () => {
    const olds = { device: "01:00.0", address: "0000:01:00.0", driver: "vfio-pci", wholeGroup: true, allowBootVga: false, persistent: false, group: 7, vfioDevice: "/dev/vfio/7", members: [] } as IommuBindingOutputs;
    expect(diff("x", olds, { ...olds, device: "02:00.0", address: "0000:02:00.0" })).toEqual({ changes: true, replaces: ["device"], deleteBeforeReplace: true });
    expect(diff("x", olds, { ...olds, connection: { host: "gpu-box" } }).replaces).toEqual(["connection"]);
    expect(diff("x", olds, { ...olds, driver: "pci-stub" })).toEqual({ changes: true, replaces: [], deleteBeforeReplace: true });
    expect(diff("x", olds, { ...olds, device: "04da6b54-80e4-46f7-96ec-b56ff0331ba9", address: undefined }).replaces).toEqual(["device"]);
    expect(diff("x", olds, { ...olds })).toEqual({ changes: false, replaces: [], deleteBeforeReplace: true });
});

test("wholeGroup: false is allowed when the rest of the group is already viable", async () => {
    dev("0000:01:00.1").driver = null; // audio function unbound by hand
    const { outs } = await up({ device: "01:00.0", wholeGroup: false });
    expect(dev("0000:01:00.0").driver).toBe("vfio-pci");
    expect(dev("0000:01:00.1").driver).toBeNull();
    expect(outs.members.map((m) => m.managed)).toEqual([true, false]);
});

test("allowBootVga: true takes the console GPU when asked", async () => {
    const { outs } = await up({ device: "00:01.0", allowBootVga: true });
    expect(dev("0000:00:01.0").driver).toBe("vfio-pci");
    await remove(outs.address, outs, host);
    expect(dev("0000:00:01.0").driver).toBe("bochs-drm");
});

test("an unreachable SSH host fails check on the connection after bounded retries, naming the host", async () => {
    const c = await check({}, { device: "01:00.0", connection: { host: "127.0.0.1", port: 1, dialErrorLimit: 2, perDialTimeout: 2 } });
    expect(c.failures).toEqual([{ property: "connection", reason: expect.stringMatching(/cannot connect to root@127.0.0.1:1 over SSH: .*ECONNREFUSED/) }]);
});

describe("host-critical group members are refused at preview, naming the member and why", () => {
    /** Everything a refused check must leave alone: no program but the read-only probes ran, every driver as it was. */
    function unchanged(before: Record<string, string | null>): void {
        expect(k.state.execLog.filter((a) => a[0] === "modprobe" && a[1] !== "-n")).toEqual([]);
        expect(Object.fromEntries(Object.values(pci(k).devices).map((d) => [d.address, d.driver]))).toEqual(before);
    }
    const drivers = () => Object.fromEntries(Object.values(pci(k).devices).map((d) => [d.address, d.driver]));

    test("the ICH9 SATA controller's group holds the LPC (ISA bridge) and the SMBus: each is named with its role, nothing is written", async () => {
        const before = drivers();
        const c = await check({}, { device: "0000:00:1f.2" }, host);
        const critical = c.failures.filter((f) => f.property === "allowHostCritical");
        expect(critical.map((f) => f.reason)).toEqual([
            expect.stringMatching(/^0000:00:1f\.0 \(ISA bridge 8086:2918, on lpc_ich\), in IOMMU group 6 with 0000:00:1f\.2, is the ISA\/LPC bridge \(class 0601\): the chipset's legacy bus.*takes it from the host/),
            expect.stringMatching(/^0000:00:1f\.3 \(SMBus 8086:2930, on i801_smbus\), in IOMMU group 6 with 0000:00:1f\.2, is the SMBus controller \(class 0c05\)/),
        ]);
        expect(critical[0].reason).toContain('set allowHostCritical: ["0000:00:1f.0","0000:00:1f.3"]');
        // The plan still shows what binding would do, for the user to judge.
        expect(c.inputs.plan).toContain("0000:00:1f.0 (ISA bridge 8086:2918): lpc_ich → vfio-pci");
        unchanged(before);
    });

    test("allowHostCritical lists them (short addresses are normalized): the group binds, and destroy gives the chipset back", async () => {
        const { outs } = await up({ device: "0000:00:1f.2", allowHostCritical: ["00:1f.0", "0000:00:1f.3"] });
        expect(outs.allowHostCritical).toEqual(["0000:00:1f.0", "0000:00:1f.3"]);
        expect(["0000:00:1f.0", "0000:00:1f.2", "0000:00:1f.3"].map((a) => dev(a).driver)).toEqual(["vfio-pci", "vfio-pci", "vfio-pci"]);
        await remove(outs.address, outs, host);
        expect(["0000:00:1f.0", "0000:00:1f.2", "0000:00:1f.3"].map((a) => dev(a).driver)).toEqual(["lpc_ich", "ahci", "i801_smbus"]);
    });

    test("allowing only one of the two still refuses the other", async () => {
        const c = await check({}, { device: "0000:00:1f.2", allowHostCritical: ["0000:00:1f.0"] }, host);
        expect(c.failures.map((f) => [f.property, f.reason.slice(0, 12)])).toEqual([["allowHostCritical", "0000:00:1f.3"]]);
    });

    test("a bad address in allowHostCritical is refused with the form to use", async () => {
        const c = await check({}, { device: "0000:00:1f.2", allowHostCritical: ["00:1f.9"] }, host);
        expect(c.failures).toEqual([{ property: "allowHostCritical[0]", reason: 'allowHostCritical[0]: "00:1f.9" is not a PCI address: write it as DDDD:BB:DD.F (e.g. 0000:01:00.0) or BB:DD.F as lspci prints it' }]);
    });

    test("the virtio disk the root filesystem is on is refused as such", async () => {
        const before = drivers();
        const c = await check({}, { device: "00:03.0" }, host);
        expect(c.failures).toEqual([
            {
                property: "allowHostCritical",
                reason: expect.stringMatching(/^0000:00:03\.0 \(SCSI storage controller 1af4:1001, on virtio-pci\) holds the root filesystem \/ \(ext4 on \/dev\/vda\): binding it to vfio-pci takes it from the host/),
            },
        ]);
        unchanged(before);
    });

    test("an active swap partition makes its controller host-critical too (the NVMe here)", async () => {
        const s = system(k);
        s.block.push({ name: "nvme0n1", dev: "259:0", path: "/sys/devices/pci0000:00/0000:00:10.2/0000:03:00.0/nvme/nvme0/nvme0n1" });
        s.block.push({ name: "nvme0n1p2", dev: "259:2", path: "/sys/devices/pci0000:00/0000:00:10.2/0000:03:00.0/nvme/nvme0/nvme0n1/nvme0n1p2" });
        s.swaps += "/dev/nvme0n1p2                          partition\t1048572\t\t0\t\t-2\n";
        const c = await check({}, { device: "03:00.0" }, host);
        expect(c.failures.map((f) => f.reason)).toEqual([expect.stringMatching(/^0000:03:00\.0 \(NVMe controller 1b36:0010, on nvme\) holds the active swap \/dev\/nvme0n1p2:/)]);
    });

    test("a root filesystem on device-mapper is traced through slaves/ to its disk, one round trip per level", async () => {
        const s = system(k);
        s.mountinfo = s.mountinfo.replace("254:0 / / rw,noatime shared:1 - ext4 /dev/vda rw", "253:0 / / rw,noatime shared:1 - ext4 /dev/mapper/vg-root rw");
        s.block.push({ name: "dm-0", dev: "253:0", path: "/sys/devices/virtual/block/dm-0", slaves: ["vda"] });
        const first = host.roundTrips;
        const c = await check({}, { device: "00:03.0" }, host);
        expect(c.failures.map((f) => f.reason)).toEqual([expect.stringMatching(/^0000:00:03\.0 .* holds the root filesystem \/ \(ext4 on \/dev\/mapper\/vg-root\)/)]);
        expect(host.roundTrips - first).toBe(3);
    });

    test("the NIC carrying our SSH session is refused, naming the session and the interface", async () => {
        const c = await check({}, { device: "00:02.0" }, host);
        expect(c.failures).toEqual([
            {
                property: "allowHostCritical",
                reason: expect.stringMatching(/^0000:00:02\.0 \(Ethernet controller 1af4:1000, on virtio-pci\) carries the SSH session we are connected over \(10\.0\.2\.2:37578 → 10\.0\.2\.15:22 on lab0\)/),
            },
        ]);
    });

    test("not over SSH, the NIC is free to bind", async () => {
        system(k).sshConnection = null;
        const c = await check({}, { device: "00:02.0" }, host);
        expect(c.failures).toEqual([]);
    });

    test("over SSH on a host without `ip`, any NIC may be the session's: refused, saying why it cannot tell", async () => {
        system(k).noIp = true;
        const c = await check({}, { device: "00:02.0" }, host);
        expect(c.failures.map((f) => f.reason)).toEqual([expect.stringMatching(/may carry the SSH session we are connected over \(10\.0\.2\.2 → 10\.0\.2\.15\).*`ip -o addr show` failed/)]);
    });

    test("the GPU pair is not affected: its group has no host-critical member", async () => {
        const c = await check({}, { device: "01:00.0" }, host);
        expect(c.failures).toEqual([]);
    });
});

describe("naming a bridge says what is true of it", () => {
    test.each<[string, string, (k: FakeKernel) => void, RegExp]>([
        [
            "a root port on pcieport stays there; the devices behind it are named",
            "0000:00:10.0",
            () => undefined,
            /^0000:00:10\.0 is a PCI bridge \(class 0604\); a bridge cannot be passed through to a VM, and this one stays on pcieport\. Bind the device behind it instead: 0000:01:00\.0, 0000:01:00\.1$/,
        ],
        [
            "a root port with no driver is left as is",
            "0000:00:10.1",
            (k) => void (pci(k).devices["0000:00:10.1"].driver = null),
            /^0000:00:10\.1 is a PCI bridge .* this one has no driver and is left as is\. Bind the device behind it instead: 0000:02:00\.0$/,
        ],
        ["the host bridge: the root complex, with no driver", "0000:00:00.0", () => undefined, /^0000:00:00\.0 is a Host bridge \(class 0600\); .* has no driver and is left as is\. It is the host's root complex/],
    ])("%s", async (_what, address, setup, expected) => {
        setup(k);
        const c = await check({}, { device: address }, host);
        expect(c.failures.find((f) => f.property === "device")?.reason).toMatch(expected);
    });

    test("an ISA bridge is not a bridge left on pcieport: named as the device, it is refused as host-critical", async () => {
        const c = await check({}, { device: "00:1f.0" }, host);
        expect(c.failures.some((f) => /bridges? (stay|cannot)/.test(f.reason))).toBe(false);
        expect(c.failures.find((f) => f.reason.startsWith("0000:00:1f.0"))?.reason).toMatch(/^0000:00:1f\.0 \(ISA bridge 8086:2918, on lpc_ich\) is the ISA\/LPC bridge/);
    });
});
