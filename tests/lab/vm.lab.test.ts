/**
 * PassthroughVm on a real kernel: a nested QEMU (TCG) inside the lab VM, driven over SSH (batches on exec
 * channels, QMP through OpenSSH's direct-streamlocal channel), with the VGA+audio group bound by IommuBinding, an
 * NVMe VF, an mdev (mtty) and a /dev/shm Looking Glass buffer. Proves on real QEMU and vfio what the fake claims:
 * every device shows in query-pci, a killed QEMU is drift that up repairs, a guest without an OS ignores
 * powerdown so the stop falls back to quit (and a frozen QEMU to SIGKILL), and the VM must go before its bindings.
 *
 * The mdev comes from MdevInstance (mtty's `mtty-2`); the VF is made with plain sysfs writes (VirtualFunctions has
 * its own tests).
 */
import * as binding from "../../provider/iommuBinding";
import * as mdev from "../../provider/mdevInstance";
import { SshHost } from "../../provider/host/ssh";
import { PassthroughVmOutputs, check, create, diff, read, remove, stopQemu, update } from "../../provider/passthroughVm";
import { vmPaths } from "../../provider/qemu/cmdline";
import { QmpClient, flattenPci } from "../../provider/qemu/qmp";
import type { LabHandle } from "./lab";
import { labSuite } from "./labState";

const { describe: labDescribe, lab } = labSuite();
const PF = "0000:03:00.0";
const VF = "0000:03:00.1";
const MDEV = "6c1f3e0a-4b9d-4c6e-9a51-0d2f7b8e1a35";
const SHM = "/dev/shm/looking-glass-lab";
const NAME = "lab-vm";

async function sh(l: LabHandle, argv: string[]): Promise<string> {
    const r = await l.ssh(argv);
    if (r.code !== 0) throw new Error(`${argv.join(" ")} failed (${r.code}): ${r.stderr}`);
    return r.stdout;
}

labDescribe("PassthroughVm on the lab kernel (nested QEMU, TCG)", () => {
    const l = lab!;
    let host: SshHost;
    const bindings: binding.IommuBindingOutputs[] = [];
    let mtty: mdev.MdevInstanceOutputs | undefined;
    const inputs = {
        name: NAME,
        accel: "tcg",
        cpu: { cores: 1 },
        memoryMb: 256,
        network: { mode: "none" },
        devices: ["01:00.0", VF],
        mdevs: [{ uuid: MDEV, type: "mtty-2" }],
        sharedMemory: { path: SHM, sizeMb: 32 },
        // No disk: nothing in the guest answers ACPI powerdown, so every stop exercises the fallback.
        shutdownTimeoutSeconds: 3,
    };

    async function bind(device: string) {
        const c = await binding.check({}, { device }, host);
        expect(c.failures).toEqual([]);
        const { outs } = await binding.create(c.inputs, host);
        bindings.push(outs);
        return outs;
    }

    beforeAll(async () => {
        host = new SshHost(l.connection);
        await bind("01:00.0");
        await sh(l, ["sh", "-c", `echo 0 > /sys/bus/pci/devices/${PF}/sriov_drivers_autoprobe && echo 1 > /sys/bus/pci/devices/${PF}/sriov_numvfs`]);
        await bind(VF);
        const m = await mdev.check({}, { parent: "mtty", type: "mtty-2", uuid: MDEV }, host);
        expect(m.failures).toEqual([]);
        mtty = (await mdev.create(m.inputs, host)).outs;
    });

    afterAll(async () => {
        // Leave the guest as found, whatever failed: VM, mdev, bindings (newest first), VFs, buffer.
        await stopQemu(host, vmPaths(NAME), await pidOf(), 0).catch(() => undefined);
        if (mtty) await mdev.remove(MDEV, mtty, host).catch(() => l.ssh(["sh", "-c", `echo 1 > /sys/bus/mdev/devices/${MDEV}/remove`]));
        for (const b of [...bindings].reverse()) await binding.remove(b.address, b, host).catch(() => undefined);
        await l.ssh(["sh", "-c", `echo 0 > /sys/bus/pci/devices/${PF}/sriov_numvfs; echo 1 > /sys/bus/pci/devices/${PF}/sriov_drivers_autoprobe; rm -f ${SHM}; rm -rf /run/pulumi-vfio /var/lib/pulumi-vfio`]);
        await host.close();
    });

    async function pidOf(): Promise<number | null> {
        const r = await l.ssh(["cat", vmPaths(NAME).pidFile]);
        return r.code === 0 ? Number(r.stdout.trim()) : null;
    }

    let outs: PassthroughVmOutputs;

    test("preview shows the command line; up starts QEMU and QMP lists every device: GPU + audio, VF, mdev, IVSHMEM", async () => {
        const c = await check({}, inputs, host);
        expect(c.failures).toEqual([]);
        expect(c.inputs.hostDevices!.map((d) => d.address)).toEqual(["0000:01:00.0", "0000:01:00.1", VF]);
        const created = await create(c.inputs, host);
        outs = created.outs;
        expect(outs).toMatchObject({ status: "running", missingDevices: [] });
        expect(outs.commandLine).toEqual(c.inputs.commandLine);

        // Ask QEMU ourselves, over the same SSH connection, what it has: every device realized at once, and on the
        // guest's PCI bus (query-pci) as soon as its firmware has numbered the root ports' buses.
        const client = await QmpClient.connect(await host.openUnixSocket(outs.qmpSocket));
        const want = ["hostdev0", "hostdev1", "hostdev2", "mdev0", "shmem0"];
        try {
            const peripheral = (await client.execute("qom-list", { path: "/machine/peripheral" })).map((p) => p.name);
            expect(peripheral).toEqual(expect.arrayContaining(want));
            let ids: string[] = [];
            let pci: ReturnType<typeof flattenPci> = [];
            for (let i = 0; i < 120 && !want.every((w) => ids.includes(w)); i++) {
                pci = flattenPci(await client.execute("query-pci"));
                ids = pci.map((d) => d.qdev_id);
                if (!want.every((w) => ids.includes(w))) await new Promise((r) => setTimeout(r, 500));
            }
            expect(ids).toEqual(expect.arrayContaining(want));
            // Real QEMU put the root bus's devices where the command line's fixed addr= said (cmdline.ts's layout).
            const at = (id: string) => pci.filter((d) => d.qdev_id === id && d.bus === 0).map((d) => `${d.slot.toString(16)}.${d.function}`);
            expect([at("rp0"), at("rp1"), at("rp-mdev0"), at("shmem0")]).toEqual([["10.0"], ["10.1"], ["18.0"], ["3.0"]]);
            expect((await client.execute("query-name")).name).toBe(NAME);
        } finally {
            client.close();
        }
        // The process holds both groups; the socket is root-only.
        const groups = await sh(l, ["sh", "-c", `ls -l /proc/${outs.pid}/fd | grep -o '/dev/vfio/[0-9]*' | sort -u`]);
        expect(groups.trim().split("\n")).toEqual(expect.arrayContaining([bindings[0].vfioDevice, bindings[1].vfioDevice]));
        expect((await sh(l, ["stat", "-c", "%F %a", outs.qmpSocket])).trim()).toBe("socket 600");
        expect((await sh(l, ["stat", "-c", "%a", vmPaths(NAME).runDir])).trim()).toBe("700");
        expect((await sh(l, ["stat", "-c", "%s", SHM])).trim()).toBe(String(32 * 1024 * 1024));

        const r = await read(NAME, outs, host);
        expect(r.props!.status).toBe("running");
        const again = await check(outs, inputs, host);
        expect(diff(NAME, r.props!, again.inputs).changes).toBe(false);
    });

    test("the VM goes first: the binding's and the mdev's deletes are refused while QEMU holds their groups", async () => {
        const gpu = bindings[0];
        await expect(binding.remove(gpu.address, gpu, host)).rejects.toThrow(/held open by PID \d+ \(qemu-system-x86\).*Stop the VM first/);
        await expect(mdev.remove(MDEV, mtty!, host)).rejects.toThrow(/held open|in use|stop the VM/i);
        expect((await sh(l, ["readlink", "/sys/bus/pci/devices/0000:01:00.0/driver"])).trim()).toMatch(/vfio-pci$/);
    });

    test("drift: QEMU killed by hand shows as stopped on refresh, and up starts it again", async () => {
        await sh(l, ["kill", "-9", String(outs.pid)]);
        for (let i = 0; i < 50 && (await l.ssh(["test", "-e", `/proc/${outs.pid}`])).code === 0; i++) await new Promise((r) => setTimeout(r, 100));
        const r = await read(NAME, outs, host);
        expect(r.props).toMatchObject({ status: "stopped", pid: null });
        const c = await check(outs, inputs, host);
        expect(diff(NAME, r.props!, c.inputs).changes).toBe(true);
        const u = await update(NAME, r.props!, c.inputs, host);
        expect(u.outs).toMatchObject({ status: "running", missingDevices: [] });
        expect(u.outs.pid).not.toBe(outs.pid);
        outs = u.outs;
    });

    test("graceful stop with no guest OS: powerdown is ignored, the timeout passes, QEMU is told to quit", async () => {
        const report = await stopQemu(host, vmPaths(NAME), outs.pid, inputs.shutdownTimeoutSeconds);
        expect(report.how).toBe("quit");
        expect((await l.ssh(["test", "-e", `/proc/${outs.pid}`])).code).not.toBe(0);
        // Back up for the next test, through the state machine (a stopped VM that should run).
        const r = await read(NAME, outs, host);
        outs = (await update(NAME, r.props!, (await check(outs, inputs, host)).inputs, host)).outs;
        expect(outs.status).toBe("running");
    });

    test("a frozen QEMU (SIGSTOP: QMP silent, SIGTERM pending) is killed", async () => {
        await sh(l, ["kill", "-STOP", String(outs.pid)]);
        const report = await stopQemu(host, vmPaths(NAME), outs.pid, 1);
        expect(report.how).toBe("sigkill");
        const r = await read(NAME, outs, host);
        outs = (await update(NAME, r.props!, (await check(outs, inputs, host)).inputs, host)).outs;
        expect(outs.status).toBe("running");
    });

    test("autostart: a systemd unit with the same argv is written and enabled, without restarting the VM", async () => {
        const withUnit = { ...inputs, autostart: true };
        const u = await update(NAME, outs, (await check(outs, withUnit, host)).inputs, host);
        expect(u.outs).toMatchObject({ pid: outs.pid, unit: "pulumi-vfio-vm-lab-vm.service" });
        expect((await sh(l, ["systemctl", "is-enabled", "pulumi-vfio-vm-lab-vm.service"])).trim()).toBe("enabled");
        const verify = await l.ssh(["systemd-analyze", "verify", "/etc/systemd/system/pulumi-vfio-vm-lab-vm.service"]);
        expect(verify.stderr).not.toMatch(/Invalid|Failed to parse|unknown/i);
        outs = u.outs;
    });

    test("delete stops the VM and removes its files; then the bindings can go", async () => {
        await remove(NAME, outs, host);
        expect((await l.ssh(["test", "-e", `/proc/${outs.pid}`])).code).not.toBe(0);
        expect((await l.ssh(["test", "-e", vmPaths(NAME).runDir])).code).not.toBe(0);
        expect((await l.ssh(["test", "-e", vmPaths(NAME).unitFile])).code).not.toBe(0);
        expect((await read(NAME, outs, host)).props!.status).toBe("stopped");
        const gpu = bindings[0];
        await binding.remove(gpu.address, gpu, host);
        bindings.shift();
        expect((await sh(l, ["readlink", "/sys/bus/pci/devices/0000:01:00.0/driver"])).trim()).toMatch(/bochs-drm$/);
    });
});
