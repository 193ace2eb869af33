/**
 * The SR-IOV kernel contract on the lab's emulated NVMe (03:00.0, sriov_totalvfs 4): what sriov_numvfs and
 * sriov_drivers_autoprobe answer, and VirtualFunctions on top, with an IommuBinding taking a VF. The same tests run
 * against the fake kernel (sriov.fake.test.ts) and the lab's real kernel (sriov.lab.test.ts).
 * Facts from Documentation/ABI/testing/sysfs-bus-pci, drivers/pci/iov.c and LAB.md.
 */
import { Host, Op, OpResult } from "../../provider/host/types";
import { check as bindCheck, create as bindCreate, remove as bindRemove } from "../../provider/iommuBinding";
import { VirtualFunctionsOutputs, check, create, read, remove, update } from "../../provider/virtualFunctions";

export interface SriovTarget {
    host: Host;
    /** Make a VM hold a VF bound to vfio-pci (fake: a process on /dev/vfio/<group>; lab: nested QEMU). */
    hold(vf: string, group: number): Promise<() => Promise<void>>;
}

const PF = "0000:03:00.0";
const P = `/sys/bus/pci/devices/${PF}`;
const w = (path: string, data: string): Op => ({ op: "write", path, data });

async function one(host: Host, op: Op): Promise<OpResult> {
    return (await host.run([op]))[0];
}
const attr = async (host: Host, name: string) => (await one(host, { op: "read", path: `${P}/${name}` })).data.trim();
const link = async (host: Host, path: string) => {
    const r = await one(host, { op: "readlink", path });
    return r.ok ? r.data.trim().split("/").pop()! : null;
};

/** The NVMe as the lab boots: nvme bound, no VFs, autoprobe on. */
async function reset(host: Host): Promise<void> {
    await host.run([w(`${P}/sriov_numvfs`, "0")]);
    if ((await link(host, `${P}/driver`)) !== "nvme") await host.run([w("/sys/bus/pci/drivers/nvme/bind", PF)]);
    await host.run([w(`${P}/sriov_drivers_autoprobe`, "1")]);
}

export function sriovContract(describeFn: jest.Describe, target: () => SriovTarget): void {
    describeFn("SR-IOV kernel contract (emulated NVMe)", () => {
        let host: Host;
        let t: SriovTarget;
        beforeAll(async () => {
            t = target();
            host = t.host;
            await reset(host);
            expect((await one(host, { op: "exec", argv: ["modprobe", "vfio-pci"] })).ok).toBe(true);
        });
        afterEach(() => reset(host));

        test("the PF as booted: 4 VFs possible, none on, autoprobe on, VFs at offset 1 stride 1", async () => {
            expect([await attr(host, "sriov_totalvfs"), await attr(host, "sriov_numvfs"), await attr(host, "sriov_drivers_autoprobe")]).toEqual(["4", "0", "1"]);
            expect([await attr(host, "sriov_offset"), await attr(host, "sriov_stride")]).toEqual(["1", "1"]);
            expect(await link(host, `${P}/driver`)).toBe("nvme");
            expect((await one(host, { op: "read", path: "/sys/bus/pci/devices/0000:02:00.0/sriov_totalvfs" })).errno).toBe("ENOENT");
        });

        test("with autoprobe 0, 2 VFs appear as virtfn0/1 without a driver, each in its own IOMMU group, physfn pointing back", async () => {
            const r = await host.run([w(`${P}/sriov_drivers_autoprobe`, "0"), w(`${P}/sriov_numvfs`, "2")], { stopOnError: true });
            expect(r.map((x) => x.ok)).toEqual([true, true]);
            expect([await link(host, `${P}/virtfn0`), await link(host, `${P}/virtfn1`), await link(host, `${P}/virtfn2`)]).toEqual(["0000:03:00.1", "0000:03:00.2", null]);
            expect(await link(host, "/sys/bus/pci/devices/0000:03:00.1/physfn")).toBe(PF);
            expect([await link(host, "/sys/bus/pci/devices/0000:03:00.1/driver"), await link(host, "/sys/bus/pci/devices/0000:03:00.2/driver")]).toEqual([null, null]);
            const groups = [await link(host, `${P}/iommu_group`), await link(host, `${P}/virtfn0/iommu_group`), await link(host, `${P}/virtfn1/iommu_group`)];
            expect(new Set(groups).size).toBe(3);
        });

        test.each<[string, string[], string, string | null]>([
            ["2 → 3 without going through 0", ["2"], "3", "EBUSY"],
            ["above sriov_totalvfs", [], "9", "ERANGE"],
            ["not a number", [], "abc", "EINVAL"],
            ["negative", [], "-1", "EINVAL"],
            ["the same count again (a no-op)", ["2"], "2", null],
        ])("sriov_numvfs: %s", async (_what, before, value, errno) => {
            await host.run([w(`${P}/sriov_drivers_autoprobe`, "0"), ...before.map((b) => w(`${P}/sriov_numvfs`, b))]);
            const r = await one(host, w(`${P}/sriov_numvfs`, value));
            expect(r.ok ? null : r.errno).toBe(errno);
        });

        test("a PF without a driver: ENOENT for a count, ERANGE still first, 0 accepted; autoprobe takes only 0 or 1", async () => {
            await host.run([w("/sys/bus/pci/drivers/nvme/unbind", PF)]);
            expect((await one(host, w(`${P}/sriov_numvfs`, "1"))).errno).toBe("ENOENT");
            expect((await one(host, w(`${P}/sriov_numvfs`, "9"))).errno).toBe("ERANGE");
            expect((await one(host, w(`${P}/sriov_numvfs`, "0"))).ok).toBe(true);
            expect((await one(host, w(`${P}/sriov_drivers_autoprobe`, "2"))).errno).toBe("EINVAL");
        });

        test("VirtualFunctions: preview names the VFs, up creates them, a count change goes through 0, refresh sees drift, destroy restores", async () => {
            const c = await check({}, { physicalFunction: PF, count: 2 }, host);
            expect(c.failures).toEqual([]);
            expect(c.inputs.plan).toEqual([`${PF} sriov_drivers_autoprobe: 1 → 0 (new VFs stay without a host driver)`, `${PF} sriov_numvfs: 0 → 2; VFs 0000:03:00.1, 0000:03:00.2 appear`]);
            const outs = (await create(c.inputs, host)).outs;
            expect(outs).toMatchObject({ count: 2, autoprobe: false, totalVfs: 4, addresses: ["0000:03:00.1", "0000:03:00.2"] });
            const c3 = await check(outs, { physicalFunction: PF, count: 3 }, host);
            expect(c3.inputs.plan).toEqual([`${PF} sriov_numvfs: 2 → 0 → 3; removes 0000:03:00.1, 0000:03:00.2; VFs 0000:03:00.1, 0000:03:00.2, 0000:03:00.3 appear`]);
            const three = (await update(PF, outs, c3.inputs, host)).outs;
            expect(three.addresses).toEqual(["0000:03:00.1", "0000:03:00.2", "0000:03:00.3"]);
            await host.run([w(`${P}/sriov_numvfs`, "0")]);
            expect((await read(PF, three, host)).props).toMatchObject({ count: 0, addresses: [], groups: [] });
            await remove(PF, three, host);
            expect([await attr(host, "sriov_numvfs"), await attr(host, "sriov_drivers_autoprobe")]).toEqual(["0", "1"]);
        });

        test("VirtualFunctions: bad counts and a PF without SR-IOV fail at preview", async () => {
            expect((await check({}, { physicalFunction: PF, count: 5 }, host)).failures).toEqual([{ property: "count", reason: `count 5 is above sriov_totalvfs of ${PF}: the maximum is 4` }]);
            expect((await check({}, { physicalFunction: "0000:02:00.0", count: 1 }, host)).failures[0].reason).toMatch(/has no SR-IOV capability/);
            expect(await attr(host, "sriov_numvfs")).toBe("0");
        });

        test("a VF bound by IommuBinding and held by a VM: VirtualFunctions refuses to change or remove it, then does once released", async () => {
            const vfs = await up(host, { physicalFunction: PF, count: 2 });
            const b = await bindCheck({}, { device: vfs.addresses[0] }, host);
            expect(b.failures).toEqual([]);
            const binding = (await bindCreate(b.inputs, host)).outs;
            expect(binding.vfioDevice).toBe(`/dev/vfio/${vfs.groups[0]}`);
            const release = await t.hold(vfs.addresses[0], vfs.groups[0]!);
            try {
                const c = await check(vfs, { physicalFunction: PF, count: 1 }, host);
                expect(c.failures).toEqual([{ property: "count", reason: expect.stringMatching(/0000:03:00.1 \(bound to vfio-pci\) is held open by PID \d+; stop the VM first/) }]);
                await expect(remove(PF, vfs, host)).rejects.toThrow(/refusing to remove the VFs of 0000:03:00.0: 0000:03:00.1 \(vfio-pci, \/dev\/vfio\/\d+\) is held open by PID \d+/);
                expect(await attr(host, "sriov_numvfs")).toBe("2");
            } finally {
                await release();
            }
            await bindRemove(binding.address, binding, host);
            await remove(PF, vfs, host);
            expect(await attr(host, "sriov_numvfs")).toBe("0");
        });
    });
}

async function up(host: Host, inputs: Record<string, unknown>): Promise<VirtualFunctionsOutputs> {
    const c = await check({}, inputs, host);
    expect(c.failures).toEqual([]);
    return (await create(c.inputs, host)).outs;
}
