/**
 * VirtualFunctions against the fake lab machine (its NVMe at 03:00.0 has sriov_totalvfs 4, nvme bound, autoprobe
 * on as the kernel boots it): preview, create through 0, drift, rollback, the refusals.
 */
import { FakeHost } from "../fake/host";
import { FakeKernel } from "../fake/kernel";
import { fakeLabKernel } from "../fake/lab";
import { pci } from "../fake/pci";
import { UNKNOWN } from "../../provider/check";
import { check as bindCheck, create as bindCreate } from "../../provider/iommuBinding";
import { VfFacts, VirtualFunctionsOutputs, check, create, diff, planVfs, read, remove, update } from "../../provider/virtualFunctions";

const PF = "0000:03:00.0";
let k: FakeKernel;
let host: FakeHost;
beforeEach(() => {
    k = fakeLabKernel();
    host = new FakeHost(k);
});

const numVfs = () => pci(k).devices[PF].sriov!.numVfs;
const autoprobe = () => pci(k).devices[PF].sriov!.autoprobe;

async function up(inputs: Record<string, unknown>): Promise<VirtualFunctionsOutputs> {
    const c = await check({}, inputs, host);
    expect(c.failures).toEqual([]);
    return (await create(c.inputs, host)).outs;
}

describe("planVfs", () => {
    const pf = { address: PF, vendor: "1b36", device: "0010", subsystemVendor: "1af4", subsystemDevice: "1100", class: "010802", driver: "nvme", override: null, group: 9, bootVga: false, resetMethods: [], numaNode: -1 };
    const facts = (over: Partial<VfFacts> = {}, sriov: Partial<NonNullable<VfFacts["sriov"]>> = {}): VfFacts => ({
        pf,
        sriov: { totalVfs: 4, numVfs: 0, autoprobe: true, offset: 1, stride: 1, ...sriov },
        vfs: [],
        openers: {},
        vfioEnableSriov: false,
        ...over,
    });
    test.each<[string, number, VfFacts, string[]]>([
        ["0 → 2 with autoprobe off first", 2, facts(), ["0000:03:00.0 sriov_drivers_autoprobe: 1 → 0 (new VFs stay without a host driver)", "0000:03:00.0 sriov_numvfs: 0 → 2; VFs 0000:03:00.1, 0000:03:00.2 appear"]],
        [
            "2 → 3 through 0",
            3,
            facts({ vfs: [{ index: 0, address: "0000:03:00.1", driver: null, group: 10 }, { index: 1, address: "0000:03:00.2", driver: "vfio-pci", group: 11 }] }, { numVfs: 2, autoprobe: false }),
            ["0000:03:00.0 sriov_numvfs: 2 → 0 → 3; removes 0000:03:00.1, 0000:03:00.2 (vfio-pci); VFs 0000:03:00.1, 0000:03:00.2, 0000:03:00.3 appear"],
        ],
        ["unchanged", 0, facts({}, { autoprobe: false }), ["0000:03:00.0 has 0 VF(s), no change"]],
    ])("%s", (_what, count, f, lines) => {
        const p = planVfs({ physicalFunction: PF, count }, f);
        expect(p.problems).toEqual([]);
        expect(p.lines).toEqual(lines);
    });

    test.each<[string, number, VfFacts, string, RegExp]>([
        ["no such device", 1, facts({ pf: null }), "physicalFunction", /no PCI device 0000:03:00.0 on this host/],
        ["no SR-IOV", 1, facts({ sriov: null }), "physicalFunction", /has no SR-IOV capability \(no sriov_totalvfs\)/],
        ["SR-IOV off in firmware", 1, facts({}, { totalVfs: 0 }), "physicalFunction", /sriov_totalvfs 0: SR-IOV is disabled/],
        ["above the maximum", 9, facts(), "count", /count 9 is above sriov_totalvfs of 0000:03:00.0: the maximum is 4/],
        ["a PF without a driver", 2, facts({ pf: { ...pf, driver: null } }), "physicalFunction", /has no driver: the kernel creates VFs through the PF's driver \(sriov_numvfs answers ENOENT\)/],
        ["a PF on vfio-pci without enable_sriov", 2, facts({ pf: { ...pf, driver: "vfio-pci" } }), "physicalFunction", /modprobe vfio-pci enable_sriov=1/],
        ["a VF given as the PF", 1, facts({ pf: { ...pf, physfn: PF } }), "physicalFunction", /is itself a virtual function of 0000:03:00.0/],
        [
            "a change while a VM holds a VF",
            3,
            facts({ vfs: [{ index: 0, address: "0000:03:00.1", driver: "vfio-pci", group: 10 }], openers: { "0000:03:00.1": [4242] } }, { numVfs: 1 }),
            "count",
            /0000:03:00.1 \(bound to vfio-pci\) is held open by PID 4242; stop the VM first/,
        ],
    ])("refuses %s", (_what, count, f, property, reason) => {
        const p = planVfs({ physicalFunction: PF, count }, f);
        expect(p.problems).toEqual([{ property, reason: expect.stringMatching(reason) }]);
        expect(p.ops).toEqual([]);
    });
});

describe("VirtualFunctions on the fake lab machine", () => {
    test("preview lists the VFs that will appear and changes nothing; up creates them without a driver, each in its own group", async () => {
        const c = await check({}, { physicalFunction: "03:00.0", count: 2 }, host);
        expect(host.roundTrips).toBe(1);
        expect(c.failures).toEqual([]);
        expect(c.inputs.physicalFunction).toBe(PF);
        expect(c.inputs.plan).toEqual(["0000:03:00.0 sriov_drivers_autoprobe: 1 → 0 (new VFs stay without a host driver)", "0000:03:00.0 sriov_numvfs: 0 → 2; VFs 0000:03:00.1, 0000:03:00.2 appear"]);
        expect(numVfs()).toBe(0);
        const outs = (await create(c.inputs, host)).outs;
        expect(outs).toMatchObject({ physicalFunction: PF, count: 2, autoprobe: false, totalVfs: 4, addresses: ["0000:03:00.1", "0000:03:00.2"], previousAutoprobe: true });
        expect(outs.virtualFunctions.map((v) => v.driver)).toEqual([null, null]);
        expect(new Set(outs.groups).size).toBe(2);
        expect(outs.groups.every((g) => typeof g === "number" && g !== 9)).toBe(true);
        expect(autoprobe()).toBe(false);
    });

    test("a count change goes through 0; read is at most two round trips and shows drift; destroy restores autoprobe", async () => {
        const outs = await up({ physicalFunction: PF, count: 2 });
        const c = await check(outs, { physicalFunction: PF, count: 3 }, host);
        expect(diff(PF, outs, c.inputs)).toEqual({ changes: true, replaces: [], deleteBeforeReplace: true });
        const log = k.state.execLog.length;
        const upd = (await update(PF, outs, c.inputs, host)).outs;
        expect(k.state.execLog.length).toBe(log);
        expect(upd.addresses).toEqual(["0000:03:00.1", "0000:03:00.2", "0000:03:00.3"]);

        k.write(`/sys/bus/pci/devices/${PF}/sriov_numvfs`, "0");
        const before = host.roundTrips;
        const r = await read(PF, upd, host);
        expect(host.roundTrips - before).toBeLessThanOrEqual(2);
        expect(r.props).toMatchObject({ count: 0, addresses: [] });
        expect(diff(PF, r.props!, c.inputs).changes).toBe(true);
        const repaired = (await update(PF, r.props!, c.inputs, host)).outs;
        expect(repaired.count).toBe(3);

        await remove(PF, repaired, host);
        expect(numVfs()).toBe(0);
        expect(autoprobe()).toBe(true);
    });

    test("a VF bound by IommuBinding and held by a VM blocks a count change and destroy, with the PID", async () => {
        const outs = await up({ physicalFunction: PF, count: 2 });
        const b = await bindCheck({}, { device: outs.addresses[0] }, host);
        expect(b.failures).toEqual([]);
        const binding = (await bindCreate(b.inputs, host)).outs;
        expect(binding.vfioDevice).toBe(`/dev/vfio/${outs.groups[0]}`);
        const pid = k.hold(binding.vfioDevice!, "qemu-system-x86");

        const c = await check(outs, { physicalFunction: PF, count: 1 }, host);
        expect(c.failures).toEqual([{ property: "count", reason: expect.stringMatching(`0000:03:00.1 \\(bound to vfio-pci\\) is held open by PID ${pid}`) }]);
        await expect(remove(PF, outs, host)).rejects.toThrow(new RegExp(`refusing to remove the VFs of 0000:03:00.0: 0000:03:00.1 \\(vfio-pci, /dev/vfio/\\d+\\) is held open by PID ${pid}`));
        expect(numVfs()).toBe(2);
        k.release(pid);
        await remove(PF, outs, host);
        expect(numVfs()).toBe(0);
    });

    test("a refused write rolls back to the previous count and autoprobe, naming file and errno", async () => {
        const outs = await up({ physicalFunction: PF, count: 2, autoprobe: false });
        k.injectFault(`/sys/bus/pci/devices/${PF}/sriov_numvfs`, "EIO", "3");
        const c = await check(outs, { physicalFunction: PF, count: 3, autoprobe: true }, host);
        await expect(update(PF, outs, c.inputs, host)).rejects.toThrow(
            /setting 3 VF\(s\) on 0000:03:00.0 failed: writing "3" to \/sys\/bus\/pci\/devices\/0000:03:00.0\/sriov_numvfs failed: EIO .* 0000:03:00.0 is back to 2 VF\(s\), autoprobe 0/,
        );
        expect(numVfs()).toBe(2);
        expect(autoprobe()).toBe(false);
    });

    test.each<[string, Record<string, unknown>, string, RegExp]>([
        ["count above sriov_totalvfs", { physicalFunction: PF, count: 5 }, "count", /the maximum is 4/],
        ["a device without SR-IOV", { physicalFunction: "0000:02:00.0", count: 1 }, "physicalFunction", /0000:02:00.0 \(Unclassified device 1234:11e8\) has no SR-IOV capability/],
        ["no such device", { physicalFunction: "0000:07:00.0", count: 1 }, "physicalFunction", /no PCI device 0000:07:00.0/],
        ["a malformed address", { physicalFunction: "3:0.0", count: 1 }, "physicalFunction", /"3:0.0" is not a PCI address/],
        ["a negative count", { physicalFunction: PF, count: -1 }, "count", /count: must be >= 0, not -1/],
        ["a fractional count", { physicalFunction: PF, count: 1.5 }, "count", /count: must be an integer, not 1\.5/],
        ["no count", { physicalFunction: PF }, "count", /count: "count" is required\. How many VFs/],
    ])("bad input: %s", async (_what, inputs, property, reason) => {
        const c = await check({}, inputs, host);
        expect(c.failures.find((f) => f.property === property)?.reason).toMatch(reason);
        expect(numVfs()).toBe(0);
        expect(autoprobe()).toBe(true);
    });

    test("a PF whose driver is unbound fails at preview, not with ENOENT at up", async () => {
        k.write("/sys/bus/pci/drivers/nvme/unbind", PF);
        const c = await check({}, { physicalFunction: PF, count: 2 }, host);
        expect(c.failures[0].reason).toMatch(/has no driver/);
    });

    test("unknown inputs in preview skip the host", async () => {
        const c = await check({}, { physicalFunction: PF, count: UNKNOWN }, host);
        expect(c.failures).toEqual([]);
        expect(host.roundTrips).toBe(0);
    });

    test("diff: another PF replaces; autoprobe updates", () => {
        const olds = { physicalFunction: PF, count: 2, autoprobe: false, addresses: ["a", "b"] } as unknown as VirtualFunctionsOutputs;
        expect(diff(PF, olds, { physicalFunction: "0000:04:00.0", count: 2 })).toEqual({ changes: true, replaces: ["physicalFunction"], deleteBeforeReplace: true });
        expect(diff(PF, olds, { physicalFunction: "03:00.0", count: 2 })).toEqual({ changes: false, replaces: [], deleteBeforeReplace: true });
        expect(diff(PF, olds, { physicalFunction: PF, count: 2, autoprobe: true }).changes).toBe(true);
    });
});
