/**
 * IommuBinding on a real kernel (the lab VM): over SSH and with the provider running inside the guest. Proves what
 * the fake only claims: nested QEMU accepts the bound group, drift is seen and repaired, a failure midway is rolled
 * back, destroy is refused while a VM holds the group, persistence survives a reboot, destroy restores the drivers.
 */
import { SshHost } from "../../provider/host/ssh";
import { IommuBindingOutputs, check, create, diff, read, remove, update } from "../../provider/iommuBinding";
import { driverNow, resetLabDevices } from "../contract/pci.contract";
import { FaultyHost } from "./faultyHost";
import { guestCall } from "./guest";
import type { Host } from "../../provider/host/types";
import { labSuite } from "./labState";

const { describe: labDescribe, lab } = labSuite();
const GPU = "0000:01:00.0";
const AUDIO = "0000:01:00.1";

/** Run argv in the guest over the provider's open SSH connection (no new ssh process per command). */
async function exec(host: Host, argv: string[], timeoutMs = 120_000): Promise<{ code: number; stdout: string; stderr: string }> {
    const [r] = await host.run([{ op: "exec", argv, timeoutMs }]);
    return { code: r.code ?? (r.ok ? 0 : 1), stdout: r.data, stderr: r.message ?? "" };
}

async function sh(host: Host, argv: string[]): Promise<string> {
    const r = await exec(host, argv);
    if (r.code !== 0) throw new Error(`${argv.join(" ")} failed (${r.code}): ${r.stderr}`);
    return r.stdout;
}

/** Nested QEMU in the guest with the given functions: exits non-zero unless their group is viable. */
async function startNestedVm(host: Host, devices: string[]): Promise<{ code: number; stderr: string }> {
    const args = ["qemu-system-x86_64", "-M", "q35", "-accel", "tcg", "-m", "128", "-nodefaults", "-display", "none", "-S"];
    devices.forEach((d, i) => args.push("-device", `vfio-pci,host=${d}${i === 0 && devices.length > 1 ? ",multifunction=on" : ""},addr=0x5.${i}`));
    args.push("-daemonize", "-pidfile", "/run/lab-nested.pid");
    const r = await exec(host, args);
    return { code: r.code, stderr: r.stderr };
}

const STOP_NESTED = "test -f /run/lab-nested.pid || exit 0; p=$(cat /run/lab-nested.pid); kill $p; for i in $(seq 50); do test -e /proc/$p || break; sleep 0.2; done; rm -f /run/lab-nested.pid";

async function stopNestedVm(host: Host): Promise<void> {
    await exec(host, ["sh", "-c", STOP_NESTED]);
}

labDescribe("IommuBinding on the lab kernel", () => {
    let host: SshHost;
    const l = lab!;

    beforeAll(() => {
        host = new SshHost(l.connection);
    });
    // Each test starts from the lab's boot state, whatever an earlier test (or file) left behind.
    beforeEach(async () => {
        await stopNestedVm(host);
        await resetLabDevices(host);
    });
    afterAll(async () => {
        await stopNestedVm(host);
        await host?.close();
    });

    async function up(inputs: Record<string, unknown>, h = host): Promise<IommuBindingOutputs> {
        const c = await check({}, inputs, h);
        expect(c.failures).toEqual([]);
        return (await create(c.inputs, h)).outs;
    }

    test("preview plans both functions; up binds them; nested QEMU accepts the group; destroy is refused while it runs, then restores", async () => {
        const c = await check({}, { device: "01:00.0" }, host);
        expect(c.failures).toEqual([]);
        expect(c.inputs.plan).toEqual([
            `${GPU} (VGA controller 1234:1111): bochs-drm → vfio-pci`,
            `${AUDIO} (Audio device 8086:2668): snd_hda_intel → vfio-pci`,
            // The real kernel lists `bus` for the GPU but refuses it (ENOTTY) with the audio function on its bus.
            expect.stringMatching(/^0000:01:00\.0 \(VGA controller 1234:1111\): no reset of this function alone \(reset_method: bus;/),
            `${AUDIO} (Audio device 8086:2668): no reset method (reset_method empty) — the device keeps its state between VMs`,
        ]);
        const { outs } = await create(c.inputs, host);
        expect([await driverNow(host, GPU), await driverNow(host, AUDIO)]).toEqual(["vfio-pci", "vfio-pci"]);
        expect(await sh(host, ["stat", "-c", "%F", outs.vfioDevice!])).toMatch(/character special file/);

        const vm = await startNestedVm(host, [GPU, AUDIO]);
        expect(vm).toEqual({ code: 0, stderr: expect.any(String) });
        await expect(remove(outs.address, outs, host)).rejects.toThrow(new RegExp(`held open by PID \\d+ \\(qemu-system-x86\\).*Stop the VM first`));
        expect(await driverNow(host, GPU)).toBe("vfio-pci");

        await stopNestedVm(host);
        await remove(outs.address, outs, host);
        expect([await driverNow(host, GPU), await driverNow(host, AUDIO)]).toEqual(["bochs-drm", "snd_hda_intel"]);
        expect((await exec(host, ["test", "-e", outs.vfioDevice!])).code).not.toBe(0);
    });

    test("the viability rule is real: QEMU refuses the group when the audio function stays on its host driver", async () => {
        const c = await check({}, { device: "01:00.0", wholeGroup: false }, host);
        expect(c.failures[0].reason).toMatch(/would not be viable/);
        // Do by hand what the check refused, and watch QEMU fail exactly as the message says.
        await sh(host, ["sh", "-c", `modprobe vfio-pci && echo ${GPU} > /sys/bus/pci/drivers/bochs-drm/unbind && echo vfio-pci > /sys/bus/pci/devices/${GPU}/driver_override && echo ${GPU} > /sys/bus/pci/drivers_probe`]);
        try {
            const vm = await startNestedVm(host, [GPU]);
            expect(vm.code).not.toBe(0);
            expect(vm.stderr).toMatch(/not viable/);
        } finally {
            await sh(host, ["sh", "-c", `echo > /sys/bus/pci/devices/${GPU}/driver_override; echo ${GPU} > /sys/bus/pci/drivers/vfio-pci/unbind; echo ${GPU} > /sys/bus/pci/drivers/bochs-drm/bind`]);
        }
        expect(await driverNow(host, GPU)).toBe("bochs-drm");
    });

    test("drift: the audio function rebound by hand is reported by read and repaired by update", async () => {
        const outs = await up({ device: GPU });
        await sh(host, ["sh", "-c", `echo > /sys/bus/pci/devices/${AUDIO}/driver_override; echo ${AUDIO} > /sys/bus/pci/drivers/vfio-pci/unbind; echo ${AUDIO} > /sys/bus/pci/drivers/snd_hda_intel/bind`]);
        const r = await read(outs.address, outs, host);
        expect(r.props!.members.find((m) => m.address === AUDIO)!.driver).toBe("snd_hda_intel");
        expect(diff(outs.address, r.props!, outs).changes).toBe(true);
        const { outs: repaired } = await update(outs.address, r.props!, outs, host);
        expect(await driverNow(host, AUDIO)).toBe("vfio-pci");
        expect(repaired.members.map((m) => m.previousDriver)).toEqual(["bochs-drm", "snd_hda_intel"]);
        await remove(repaired.address, repaired, host);
        expect([await driverNow(host, GPU), await driverNow(host, AUDIO)]).toEqual(["bochs-drm", "snd_hda_intel"]);
    });

    test("rollback: when the second member fails, the first is back on bochs-drm with no override", async () => {
        const faulty = new FaultyHost(host, { path: `/sys/bus/pci/drivers/snd_hda_intel/unbind`, errno: "EBUSY" });
        const c = await check({}, { device: GPU }, host);
        await expect(create(c.inputs, faulty)).rejects.toThrow(/snd_hda_intel\/unbind failed: EBUSY.*Every changed device was restored \(0000:01:00.0 → bochs-drm/);
        expect([await driverNow(host, GPU), await driverNow(host, AUDIO)]).toEqual(["bochs-drm", "snd_hda_intel"]);
        expect((await sh(host, ["cat", `/sys/bus/pci/devices/${GPU}/driver_override`])).trim()).toBe("(null)");
    });

    test("the provider running inside the guest (local host) binds and releases the group", async () => {
        const c = await guestCall(l, "iommuBinding", "check", [{}, { device: "01:00.0" }]);
        expect(c.failures).toEqual([]);
        const { outs } = await guestCall(l, "iommuBinding", "create", [c.inputs]);
        expect(outs.members.map((m: any) => m.driver)).toEqual(["vfio-pci", "vfio-pci"]);
        expect([await driverNow(host, GPU), await driverNow(host, AUDIO)]).toEqual(["vfio-pci", "vfio-pci"]);
        const r = await guestCall(l, "iommuBinding", "read", [outs.address, outs]);
        expect(r.props.members.map((m: any) => m.driver)).toEqual(["vfio-pci", "vfio-pci"]);
        await guestCall(l, "iommuBinding", "delete", [outs.address, outs]);
        expect([await driverNow(host, GPU), await driverNow(host, AUDIO)]).toEqual(["bochs-drm", "snd_hda_intel"]);
    });

    test("persistent: true survives a reboot of the host (driverctl applies /etc/driverctl.d at boot); destroy removes it", async () => {
        const outs = await up({ device: GPU, persistent: true });
        expect((await sh(host, ["cat", `/etc/driverctl.d/pci-${GPU}`])).trim()).toBe("vfio-pci");
        await host.close();
        await l.reboot();
        host = new SshHost(l.connection);
        expect([await driverNow(host, GPU), await driverNow(host, AUDIO)]).toEqual(["vfio-pci", "vfio-pci"]);
        const r = await read(outs.address, outs, host);
        expect(diff(outs.address, r.props!, outs).changes).toBe(false);
        await remove(outs.address, r.props!, host);
        expect((await exec(host, ["ls", "/etc/driverctl.d"])).stdout).not.toContain(GPU);
        expect([await driverNow(host, GPU), await driverNow(host, AUDIO)]).toEqual(["bochs-drm", "snd_hda_intel"]);
    });
});
