/**
 * VirtualFunctions on a real kernel (the lab's emulated NVMe, sriov_totalvfs 4): VFs created, one bound to vfio-pci
 * by IommuBinding and accepted by a nested QEMU, a count change refused while it runs and done through 0 after,
 * VFs removed; and the provider running inside the guest.
 */
import { SshHost } from "../../provider/host/ssh";
import { check as bindCheck, create as bindCreate, remove as bindRemove } from "../../provider/iommuBinding";
import { VirtualFunctionsOutputs, check, create, read, remove, update } from "../../provider/virtualFunctions";
import { guestCall } from "./guest";
import type { LabHandle } from "./lab";
import { labSuite } from "./labState";
import { startNestedQemu, stopNestedQemu } from "./nestedQemu";

const { describe: labDescribe, lab } = labSuite();
const PF = "0000:03:00.0";
const P = `/sys/bus/pci/devices/${PF}`;
const PIDFILE = "/run/pv-sriov-lab.pid";

async function sh(l: LabHandle, argv: string[]): Promise<string> {
    const r = await l.ssh(argv);
    if (r.code !== 0) throw new Error(`${argv.join(" ")} failed (${r.code}): ${r.stderr}`);
    return r.stdout;
}

labDescribe("VirtualFunctions on the lab kernel", () => {
    let host: SshHost;
    const l = lab!;
    const reset = async () => {
        await stopNestedQemu(l, PIDFILE);
        await l.ssh(["sh", "-c", `for v in ${P}/virtfn*; do a=$(basename $(readlink $v)); echo > /sys/bus/pci/devices/$a/driver_override; done; echo 0 > ${P}/sriov_numvfs; echo 1 > ${P}/sriov_drivers_autoprobe; true`]);
    };

    beforeAll(async () => {
        host = new SshHost(l.connection);
        await reset();
    });
    afterAll(async () => {
        await reset();
        await host?.close();
    });

    test("VFs of the NVMe: one bound by IommuBinding is accepted by nested QEMU; a count change is refused while it runs, then goes through 0; the VFs are removed", async () => {
        const c = await check({}, { physicalFunction: "03:00.0", count: 2 }, host);
        expect(c.failures).toEqual([]);
        const vfs: VirtualFunctionsOutputs = (await create(c.inputs, host)).outs;
        expect(vfs.addresses).toEqual(["0000:03:00.1", "0000:03:00.2"]);
        expect(vfs.virtualFunctions.map((v) => v.driver)).toEqual([null, null]);
        expect((await sh(l, ["cat", `${P}/sriov_drivers_autoprobe`])).trim()).toBe("0");

        const b = await bindCheck({}, { device: vfs.addresses[0] }, host);
        expect(b.failures).toEqual([]);
        const binding = (await bindCreate(b.inputs, host)).outs;
        expect(binding.vfioDevice).toBe(`/dev/vfio/${vfs.groups[0]}`);

        const vm = await startNestedQemu(l, [{ host: vfs.addresses[0] }], PIDFILE);
        expect(vm.code).toBe(0);
        const held = await check(vfs, { physicalFunction: PF, count: 3 }, host);
        expect(held.failures).toEqual([{ property: "count", reason: expect.stringMatching(/0000:03:00.1 \(bound to vfio-pci\) is held open by PID \d+; stop the VM first/) }]);
        await expect(update(PF, vfs, { physicalFunction: PF, count: 3 }, host)).rejects.toThrow(/held open by PID/);
        expect((await sh(l, ["cat", `${P}/sriov_numvfs`])).trim()).toBe("2");

        await stopNestedQemu(l, PIDFILE);
        await bindRemove(binding.address, binding, host);
        const c3 = await check(vfs, { physicalFunction: PF, count: 3 }, host);
        expect(c3.failures).toEqual([]);
        const three = (await update(PF, vfs, c3.inputs, host)).outs;
        expect(three.addresses).toEqual(["0000:03:00.1", "0000:03:00.2", "0000:03:00.3"]);
        expect((await read(PF, three, host)).props).toEqual(three);

        await remove(PF, three, host);
        expect((await sh(l, ["cat", `${P}/sriov_numvfs`, `${P}/sriov_drivers_autoprobe`])).split("\n").slice(0, 2)).toEqual(["0", "1"]);
    });

    test("the provider inside the guest (local host) creates and removes VFs", async () => {
        const c = await guestCall(l, "virtualFunctions", "check", [{}, { physicalFunction: PF, count: 1 }]);
        expect(c.failures).toEqual([]);
        const { outs } = await guestCall(l, "virtualFunctions", "create", [c.inputs]);
        expect(outs.addresses).toEqual(["0000:03:00.1"]);
        await guestCall(l, "virtualFunctions", "delete", [PF, outs]);
        expect((await sh(l, ["cat", `${P}/sriov_numvfs`])).trim()).toBe("0");
    });
});
