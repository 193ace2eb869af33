/**
 * Resets on the lab kernel: `resetMethod` written, kept across a reboot of the host by its udev rule and given back
 * by destroy; the reset destroy runs between unbinding from vfio-pci and rebinding the host driver (the NVMe, alone
 * behind its root port, resets by FLR); a reset that fails leaves the device on vfio-pci with the kernel's errno.
 *
 * The kernel logs nothing for a function reset through sysfs (pci_reset_function → pcie_flr print only on failure),
 * so the order is proven with the kernel's function tracer (tracefs): `vfio_pci_remove` (the unbind), `pcie_flr`
 * (the reset) and `nvme_probe` (the host driver taking it back), in that order.
 */
import { SshHost } from "../../provider/host/ssh";
import { IommuBindingOutputs, check, create, read, remove } from "../../provider/iommuBinding";
import { resetRuleFile } from "../../provider/reset/plan";
import { driverNow, resetLabDevices } from "../contract/pci.contract";
import type { Host } from "../../provider/host/types";
import { labSuite } from "./labState";

const { describe: labDescribe, lab } = labSuite();
const NVME = "0000:03:00.0";
const T = "/sys/kernel/tracing";

async function sh(host: Host, script: string): Promise<{ code: number; out: string; err: string }> {
    const [r] = await host.run([{ op: "exec", argv: ["sh", "-c", script], timeoutMs: 60_000 }]);
    return { code: r.code ?? (r.ok ? 0 : 1), out: r.data, err: r.message ?? "" };
}

const methods = async (host: Host) => (await sh(host, `cat /sys/bus/pci/devices/${NVME}/reset_method`)).out.trim();

labDescribe("resets on the lab kernel", () => {
    let host: SshHost;
    const l = lab!;
    beforeAll(() => {
        host = new SshHost(l.connection);
    });
    beforeEach(async () => {
        await sh(host, `echo default > /sys/bus/pci/devices/${NVME}/reset_method; rm -f ${resetRuleFile(NVME)}`);
        await resetLabDevices(host);
        const d = await driverNow(host, NVME);
        if (d !== "nvme") await sh(host, `echo > /sys/bus/pci/devices/${NVME}/driver_override; echo ${NVME} > /sys/bus/pci/drivers/${d}/unbind; echo ${NVME} > /sys/bus/pci/drivers/nvme/bind`);
    });
    afterAll(() => host?.close());

    async function up(inputs: Record<string, unknown>): Promise<IommuBindingOutputs> {
        const c = await check({}, inputs, host);
        expect(c.failures).toEqual([]);
        return (await create(c.inputs, host)).outs;
    }

    test("resetMethod is written, kept across a reboot of the host by its udev rule, and destroy gives the list back and removes the rule", async () => {
        expect(await methods(host)).toBe("flr bus");
        const outs = await up({ device: NVME, resetMethod: "bus" });
        expect(await methods(host)).toBe("bus");
        expect((await sh(host, `stat -c %a ${resetRuleFile(NVME)}`)).out.trim()).toBe("600");
        await host.close();
        await l.reboot();
        host = new SshHost(l.connection);
        // At boot the kernel lists `flr bus` again; the rule sets `bus` when udev adds the device.
        expect(await methods(host)).toBe("bus");
        const r = await read(outs.address, outs, host);
        await remove(outs.address, r.props!, host);
        expect(await methods(host)).toBe("flr bus");
        expect((await sh(host, `test -e ${resetRuleFile(NVME)}`)).code).not.toBe(0);
        expect(await driverNow(host, NVME)).toBe("nvme");
    });

    test("destroy resets the NVMe by FLR after vfio-pci let go of it and before nvme takes it back (function tracer)", async () => {
        const c = await check({}, { device: NVME }, host);
        expect(c.inputs.plan).toContain(`${NVME} (NVMe controller 1b36:0010): resets by flr; destroy resets it (flr) after unbinding it from vfio-pci, before nvme`);
        const { outs } = await create(c.inputs, host);
        expect(outs.members[0]).toMatchObject({ driver: "vfio-pci", resetOnRelease: "flr" });
        const setup = await sh(
            host,
            `mountpoint -q ${T} || mount -t tracefs nodev ${T}; echo 0 > ${T}/tracing_on; echo > ${T}/trace; echo nop > ${T}/current_tracer; ` +
                `printf '%s\\n' vfio_pci_remove pcie_flr nvme_probe > ${T}/set_ftrace_filter && echo function > ${T}/current_tracer && echo 1 > ${T}/tracing_on`,
        );
        expect(setup).toMatchObject({ code: 0 });
        const dmesgBefore = (await sh(host, "dmesg | wc -l")).out.trim();
        try {
            await remove(outs.address, outs, host);
        } finally {
            await sh(host, `echo 0 > ${T}/tracing_on`);
        }
        const trace = (await sh(host, `cat ${T}/trace`)).out;
        const calls = trace.split("\n").flatMap((line) => /\s(vfio_pci_remove|pcie_flr|nvme_probe) <-/.exec(line)?.[1] ?? []);
        expect(calls).toEqual(["vfio_pci_remove", "pcie_flr", "nvme_probe"]);
        expect(await driverNow(host, NVME)).toBe("nvme");
        // What the kernel printed meanwhile (nvme's probe), for the record: no line names the reset itself.
        const logged = (await sh(host, `dmesg | tail -n +$((${dmesgBefore} + 1))`)).out;
        expect(logged).toMatch(/nvme nvme\d+: pci function 0000:03:00\.0/);
        await sh(host, `echo nop > ${T}/current_tracer; echo > ${T}/set_ftrace_filter`);
    });

    test("a reset that fails (every method disabled by hand) leaves the NVMe on vfio-pci and says ENOTTY; once fixed, destroy releases it", async () => {
        const outs = await up({ device: NVME });
        await sh(host, `echo > /sys/bus/pci/devices/${NVME}/reset_method`);
        const err = (await remove(outs.address, outs, host).catch((e: Error) => e)) as Error;
        expect(err.message).toMatch(/the reset of 0000:03:00\.0 failed \(.*ENOTTY.*\)\. 0000:03:00\.0 is back on vfio-pci, not left without a driver/);
        expect(await driverNow(host, NVME)).toBe("vfio-pci");
        await sh(host, `echo default > /sys/bus/pci/devices/${NVME}/reset_method`);
        await remove(outs.address, outs, host);
        expect(await driverNow(host, NVME)).toBe("nvme");
    });
});
