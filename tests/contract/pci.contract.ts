/**
 * The PCI/VFIO kernel contract: what sysfs answers to the writes our provider makes. The same tests run against the
 * fake kernel (pci.fake.test.ts) and the lab's real kernel (pci.lab.test.ts); when the kernel and the fake
 * disagree, the fake is wrong. Facts from Documentation/ABI/testing/sysfs-bus-pci, DOMAIN.md and LAB.md.
 */
import { Host, Op, OpResult } from "../../provider/host/types";
import { groupGuards, readGroup } from "../../provider/sysfs/iommu";
import { bindOps, isAddress, restoreOps } from "../../provider/sysfs/pci";
import { criticalReadOps, linkOps, parseCriticalReads, parseMountinfo, parseSwaps, traceUses } from "../../provider/sysfs/critical";
import { journalPath } from "../../provider/sysfs/journal";
import { busSiblings, resetCapability } from "../../provider/reset/capability";

const GPU = "0000:01:00.0";
const AUDIO = "0000:01:00.1";
const EDU = "0000:02:00.0";
const DEV = "/sys/bus/pci/devices";
const DRV = "/sys/bus/pci/drivers";

export interface ContractTarget {
    host: Host;
}

const w = (path: string, data: string): Op => ({ op: "write", path, data });

async function one(host: Host, op: Op): Promise<OpResult> {
    return (await host.run([op]))[0];
}

async function driver(host: Host, bdf: string): Promise<string | null> {
    const r = await one(host, { op: "readlink", path: `${DEV}/${bdf}/driver` });
    return r.ok ? r.data.trim().split("/").pop()! : null;
}

async function override(host: Host, bdf: string): Promise<string> {
    return (await one(host, { op: "read", path: `${DEV}/${bdf}/driver_override` })).data.trim();
}

/** Put the GPU pair and edu back as the lab boots (bochs-drm, snd_hda_intel, edu unbound, no overrides): 2 round trips. */
export async function resetLabDevices(host: Host): Promise<void> {
    const boot = [
        [GPU, "bochs-drm"],
        [AUDIO, "snd_hda_intel"],
        [EDU, null],
    ] as const;
    const r = await host.run(boot.flatMap(([bdf]): Op[] => [{ op: "readlink", path: `${DEV}/${bdf}/driver` }, { op: "read", path: `${DEV}/${bdf}/driver_override` }]));
    const ops = boot.flatMap(([bdf, drv], i) => {
        const ov = r[2 * i + 1].data.trim();
        const now = { driver: r[2 * i].ok ? r[2 * i].data.trim().split("/").pop()! : null, override: ov === "(null)" || ov === "" ? null : ov };
        return restoreOps(bdf, now, { driver: drv, override: null });
    });
    // A binding's journal (provider/sysfs/journal.ts) is part of what a test may leave behind: the lab boots without one.
    await host.run([...ops, { op: "write", path: `${DRV}/vfio-pci/remove_id`, data: "1234 11e8", optional: true }, { op: "remove", path: journalPath(GPU), optional: true }]);
}

/** The driver a device is bound to now, or "none": one round trip on the host's open connection. */
export async function driverNow(host: Host, bdf: string): Promise<string> {
    const r = await one(host, { op: "readlink", path: `${DEV}/${bdf}/driver` });
    return r.ok ? r.data.trim().split("/").pop()! : "none";
}

export function pciContract(describeFn: jest.Describe, target: () => ContractTarget): void {
    describeFn("PCI/VFIO kernel contract", () => {
        let host: Host;
        beforeAll(async () => {
            host = target().host;
            const r = await one(host, { op: "exec", argv: ["modprobe", "vfio-pci"] });
            expect(r.ok).toBe(true);
        });
        afterEach(() => resetLabDevices(host));

        test("reset: a bus reset is refused (ENOTTY) for the GPU, whose audio function shares its bus, and runs for edu, alone behind its root port; reset/capability.ts says so beforehand", async () => {
            const [gpuMethods, eduMethods] = await host.run([
                { op: "read", path: `${DEV}/${GPU}/reset_method` },
                { op: "read", path: `${DEV}/${EDU}/reset_method` },
            ]);
            expect(gpuMethods.data.trim()).toBe("bus");
            expect(eduMethods.data.trim()).toBe("bus");
            const all = [GPU, AUDIO, EDU];
            const facts = (a: string, methods: string) => ({ vendor: "1234", device: "1111", resetMethods: methods.trim().split(/\s+/), busSiblings: busSiblings(a, all), vendorResetLoaded: false });
            expect(resetCapability(facts(GPU, gpuMethods.data)).verdict).toBe("none");
            expect(resetCapability(facts(EDU, eduMethods.data))).toMatchObject({ verdict: "ok", method: "bus" });

            const gpuReset = await one(host, w(`${DEV}/${GPU}/reset`, "1"));
            expect([gpuReset.ok, gpuReset.errno]).toEqual([false, "ENOTTY"]);
            expect(await driver(host, GPU)).toBe("bochs-drm");
            const eduReset = await one(host, w(`${DEV}/${EDU}/reset`, "1"));
            expect([eduReset.ok, eduReset.errno]).toEqual([true, undefined]);
        });

        test("the GPU and its HDMI audio share one IOMMU group; reading it costs 2 round trips", async () => {
            const before = host.roundTrips;
            const view = await readGroup(host, GPU);
            expect(host.roundTrips - before).toBe(2);
            expect(view.iommu.enabled).toBe(true);
            expect(view.members.map((m) => [m.address, m.driver, m.class])).toEqual([
                [GPU, "bochs-drm", "030000"],
                [AUDIO, "snd_hda_intel", "040300"],
            ]);
            expect(view.device!.bootVga).toBe(false);
            expect(view.drivers).toEqual(expect.arrayContaining(["vfio-pci", "bochs-drm", "snd_hda_intel"]));
        });

        test("driver_override reads (null) when unset, does not unbind, and a newline clears it", async () => {
            expect(await override(host, GPU)).toBe("(null)");
            expect((await one(host, w(`${DEV}/${GPU}/driver_override`, "vfio-pci"))).ok).toBe(true);
            expect(await override(host, GPU)).toBe("vfio-pci");
            expect(await driver(host, GPU)).toBe("bochs-drm");
            expect((await one(host, w(`${DEV}/${GPU}/driver_override`, "\n"))).ok).toBe(true);
            expect(await override(host, GPU)).toBe("(null)");
        });

        test("driverctl's sequence moves the group to vfio-pci, /dev/vfio/<group> appears at once; restore gives it back", async () => {
            const view = await readGroup(host, GPU);
            const ops = view.members.flatMap((m) => bindOps(m.address, m, "vfio-pci"));
            const r = await host.run(ops, { stopOnError: true });
            expect(r.filter((x) => !x.ok && !x.skipped).map((x) => x.errno)).toEqual([]);
            expect([await driver(host, GPU), await driver(host, AUDIO)]).toEqual(["vfio-pci", "vfio-pci"]);
            expect((await one(host, { op: "stat", path: `/dev/vfio/${view.group}` })).data).toMatch(/^character special file/);

            const now = { driver: "vfio-pci", override: "vfio-pci" };
            await host.run([...restoreOps(GPU, now, { driver: "bochs-drm", override: null }), ...restoreOps(AUDIO, now, { driver: "snd_hda_intel", override: null })]);
            expect([await driver(host, GPU), await driver(host, AUDIO)]).toEqual(["bochs-drm", "snd_hda_intel"]);
            expect([await override(host, GPU), await override(host, AUDIO)]).toEqual(["(null)", "(null)"]);
            expect((await one(host, { op: "stat", path: `/dev/vfio/${view.group}` })).errno).toBe("ENOENT");
        });

        test("driverctl's unset-override (clear the override, unbind, drivers_probe) gives each function to the driver the kernel matches", async () => {
            const view = await readGroup(host, GPU);
            await host.run(view.members.flatMap((m) => bindOps(m.address, m, "vfio-pci")), { stopOnError: true });
            const now = { driver: "vfio-pci", override: "vfio-pci" };
            const probe = { driver: null, override: null, probe: true };
            const r = await host.run([...restoreOps(GPU, now, probe), ...restoreOps(AUDIO, now, probe)]);
            expect(r.filter((x) => !x.ok).map((x) => x.errno)).toEqual([]);
            expect([await driver(host, GPU), await driver(host, AUDIO)]).toEqual(["bochs-drm", "snd_hda_intel"]);
            expect([await override(host, GPU), await override(host, AUDIO)]).toEqual(["(null)", "(null)"]);
            expect((await one(host, { op: "stat", path: `/dev/vfio/${view.group}` })).errno).toBe("ENOENT");
        });

        test("binding only the VGA function is not refused by the kernel (viability is ours to check)", async () => {
            const view = await readGroup(host, GPU);
            await host.run(bindOps(GPU, view.device!, "vfio-pci"));
            expect(await driver(host, GPU)).toBe("vfio-pci");
            expect(await driver(host, AUDIO)).toBe("snd_hda_intel");
            expect((await one(host, { op: "stat", path: `/dev/vfio/${view.group}` })).ok).toBe(true);
        });

        test.each([
            ["bind of a device that already has a driver", () => w(`${DRV}/snd_hda_intel/bind`, AUDIO), "EBUSY"],
            ["bind of an address that does not exist", () => w(`${DRV}/vfio-pci/bind`, "0000:07:00.0"), "ENODEV"],
            ["unbind from a driver the device is not bound to", () => w(`${DRV}/vfio-pci/unbind`, GPU), "ENODEV"],
            ["vfio-pci bind with no override and no matching id", () => w(`${DRV}/vfio-pci/bind`, EDU), "ENODEV"],
            ["a malformed new_id", () => w(`${DRV}/vfio-pci/new_id`, "zzzz"), "EINVAL"],
            ["remove_id of an id that was never added", () => w(`${DRV}/vfio-pci/remove_id`, "1234 11e8"), "ENODEV"],
        ])("%s → %s", async (_what, op, errno) => {
            const r = await one(host, op());
            expect(r.ok).toBe(false);
            expect(r.errno).toBe(errno);
        });

        test("an override naming an unknown driver is accepted and leaves the device unbound after a probe", async () => {
            expect((await one(host, w(`${DEV}/${EDU}/driver_override`, "no-such-driver"))).ok).toBe(true);
            await host.run([w("/sys/bus/pci/drivers_probe", EDU)]);
            expect(await driver(host, EDU)).toBeNull();
        });

        test("new_id grabs the unbound device with that id at once; a duplicate is EEXIST", async () => {
            expect((await one(host, w(`${DRV}/vfio-pci/new_id`, "1234 11e8"))).ok).toBe(true);
            expect(await driver(host, EDU)).toBe("vfio-pci");
            const dup = await one(host, w(`${DRV}/vfio-pci/new_id`, "1234 11e8"));
            expect(dup.errno).toBe("EEXIST");
        });

        test("new_id never takes a bound device", async () => {
            const r = await one(host, w(`${DRV}/vfio-pci/new_id`, "8086 2668"));
            expect(r.ok).toBe(true);
            expect(await driver(host, AUDIO)).toBe("snd_hda_intel");
            await host.run([w(`${DRV}/vfio-pci/remove_id`, "8086 2668")]);
        });

        test("guards from a read of the group let a batch run while the group is unchanged, and stop it before its write once a member moved", async () => {
            const { observation } = await readGroup(host, GPU);
            const guards = groupGuards(GPU, observation!.seen!);
            const mark = w(`${DEV}/${EDU}/driver_override`, "pci-stub");
            const r1 = await host.run([...guards, mark], { stopOnError: true });
            expect(r1.map((x) => x.ok)).toEqual(guards.map(() => true).concat(true));
            expect(await override(host, EDU)).toBe("pci-stub");

            await host.run([w(`${DRV}/snd_hda_intel/unbind`, AUDIO), w(`${DEV}/${EDU}/driver_override`, "\n")]);
            const r2 = await host.run([...guards, mark], { stopOnError: true });
            const failed = r2.findIndex((x) => !x.ok);
            expect(guards[failed]).toEqual({ op: "readlink", path: `${DEV}/${AUDIO}/driver`, expect: `${DRV}/snd_hda_intel` });
            expect(r2[failed]).toMatchObject({ errno: "ESTALE", message: "found" });
            expect(r2[r2.length - 1].skipped).toBe(true);
            expect(await override(host, EDU)).toBe("(null)");
        });

        test("what the host uses: / is ext4 on the virtio disk 00:03.0 (254:0), no swap, the SSH session on lab0 (00:02.0); two round trips", async () => {
            const before = host.roundTrips;
            const r1 = await host.run(criticalReadOps());
            expect(r1).toHaveLength(4);
            expect(parseMountinfo(r1[0].data).filter((m) => !m.dev.startsWith("0:"))).toEqual([{ dev: "254:0", mountPoint: "/", fsType: "ext4", source: "/dev/vda" }]);
            expect(parseSwaps(r1[1].data)).toEqual([]);
            expect(r1[2].data).toMatch(/^10\.0\.2\.2 \d+ 10\.0\.2\.15 22\n$/);
            expect(r1[3].data).toMatch(/^2: lab0 +inet 10\.0\.2\.15\/24 /m);
            const reads = parseCriticalReads(r1);
            expect(reads.uses.map((u) => u.path)).toEqual(["/sys/dev/block/254:0", "/sys/class/net/lab0"]);
            const r2 = await host.run(linkOps(reads.uses));
            expect(r2.map((x) => [x.ok, x.data.trim()])).toEqual([
                [true, "/sys/devices/pci0000:00/0000:00:03.0/virtio1/block/vda"],
                [true, ""],
                [false, ""],
                [true, "/sys/devices/pci0000:00/0000:00:02.0/virtio0/net/lab0"],
                [true, expect.not.stringContaining("lower_")],
            ]);
            const uses = await traceUses(host, reads, r2);
            expect(host.roundTrips - before).toBe(2);
            expect(Object.fromEntries(uses.byAddress)).toEqual({
                "0000:00:03.0": ["holds the root filesystem / (ext4 on /dev/vda)"],
                "0000:00:02.0": [expect.stringMatching(/^carries the SSH session we are connected over \(10\.0\.2\.2:\d+ → 10\.0\.2\.15:22 on lab0\)$/)],
            });
            expect(uses.unknown).toEqual([]);
        });

        test("the ICH9 functions share a group: LPC 0601 on lpc_ich, AHCI 0106 on ahci, SMBus 0c05 on i801_smbus; the CD-ROM on AHCI is not mounted", async () => {
            const view = await readGroup(host, "0000:00:1f.2");
            expect(view.members.map((m) => [m.address, m.class.slice(0, 4), m.driver])).toEqual([
                ["0000:00:1f.0", "0601", "lpc_ich"],
                ["0000:00:1f.2", "0106", "ahci"],
                ["0000:00:1f.3", "0c05", "i801_smbus"],
            ]);
            const [sr0] = await host.run([{ op: "readlink", path: "/sys/class/block/sr0" }]);
            expect(sr0.data.trim()).toBe("/sys/devices/pci0000:00/0000:00:1f.2/ata3/host2/target2:0:0/2:0:0:0/block/sr0");
            const disk = await readGroup(host, "0000:00:03.0");
            expect(disk.members.map((m) => [m.address, m.class, m.vendor, m.device, m.driver])).toEqual([["0000:00:03.0", "010000", "1af4", "1001", "virtio-pci"]]);
        });

        test("a root port's sysfs directory lists the devices behind it", async () => {
            const r = await host.run(["0000:00:10.0", "0000:00:10.1", "0000:00:00.0"].map((a): Op => ({ op: "list", path: `${DEV}/${a}` })));
            // A PCIe port also lists its port services (`0000:00:10.0:pcie001`: AER, PME, ...), which are no PCI devices.
            expect(r[0].data.split("\n")).toEqual(expect.arrayContaining(["0000:00:10.0:pcie001", GPU, AUDIO]));
            const behind = (x: OpResult) => x.data.split("\n").filter(isAddress);
            expect(r.map(behind)).toEqual([[GPU, AUDIO], [EDU], []]);
        });

        test("driver_override survives an unbind; drivers_probe then binds the override's driver", async () => {
            await host.run([w(`${DEV}/${EDU}/driver_override`, "vfio-pci")]);
            await host.run([w("/sys/bus/pci/drivers_probe", EDU)]);
            expect(await driver(host, EDU)).toBe("vfio-pci");
            await host.run([w(`${DRV}/vfio-pci/unbind`, EDU)]);
            expect(await driver(host, EDU)).toBeNull();
            expect(await override(host, EDU)).toBe("vfio-pci");
        });
    });
}
