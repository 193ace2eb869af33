/**
 * Every example converged through the real dynamic-provider plugin against a fake machine with the hardware the
 * example expects: the program runs under setMocks to get its VfioHost plans (tests/programs/runProgram.ts), the
 * plans are replayed by ProgramEngine (tests/engine/program.ts) — preview, up, up again, destroy — and the fake
 * host's state is checked after each: drivers, VFs, vGPUs, kvmfr, the QEMU processes and what they hold, and at
 * the end the machine exactly as it was.
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { FakeKernel, fakeLabKernel } from "../fake";
import { addGrubBoot } from "../fake/boot";
import { installKvmfr, kvmfr } from "../fake/kvmfr";
import { addMdevParent, mdev } from "../fake/mdev";
import { pci } from "../fake/pci";
import { qemu } from "../fake/qemu";
import type { HostPlan } from "../../sdk/hostPlan";
import { runProgram } from "../programs/runProgram";
import { PluginProcess } from "./harness";
import { ProgramEngine, declsOf, formatSteps } from "./program";

jest.setTimeout(180_000);

const EXAMPLES = path.resolve(__dirname, "..", "..", "examples");

/** A fake machine in a state file, shared by the plugin (which changes it) and the test (which looks). */
class Machine {
    readonly file: string;
    constructor(
        dir: string,
        name: string,
        prepare: (k: FakeKernel) => void,
    ) {
        this.file = path.join(dir, `${name}.json`);
        // Every example host boots with Debian's GRUB, as the examples' boot half expects.
        const k = addGrubBoot(fakeLabKernel());
        prepare(k);
        fs.writeFileSync(this.file, JSON.stringify(k.state));
    }
    kernel(): FakeKernel {
        return fakeLabKernel(JSON.parse(fs.readFileSync(this.file, "utf8")));
    }
    /** What a user would compare before and after: drivers, VFs, mdevs, vGPUs, kvmfr, VMs, files in /etc and the run dirs. */
    snapshot() {
        const k = this.kernel();
        const p = pci(k);
        return {
            devices: Object.fromEntries(Object.values(p.devices).map((d) => [d.address, { driver: d.driver, override: d.override, sriov: d.sriov ? { numVfs: d.sriov.numVfs, autoprobe: d.sriov.autoprobe } : null }])),
            mdevs: mdev(k).devices,
            vgpus: Object.fromEntries(Object.values(mdev(k).vgpu).map((g) => [g.pf, g.current])),
            kvmfr: { loaded: kvmfr(k).loaded, sizes: kvmfr(k).sizes },
            vms: Object.keys(qemu(k).processes),
            openers: Object.fromEntries(Object.entries(k.state.openers).filter(([, pids]) => pids.length)),
            files: Object.keys(k.state.files).filter((f) => /^\/(etc|run|var\/lib)\//.test(f)).sort(),
        };
    }
}

/** A file the example's VMs need (firmware, disk image), with its directories. */
function addFile(k: FakeKernel, file: string): void {
    k.mkdir(path.dirname(file));
    k.put(file, "fake", 0o644);
}

let dir: string;
const plugins: PluginProcess[] = [];
beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "pv-examples-"));
});
afterEach(async () => {
    for (const p of plugins.splice(0)) await p.stop();
    fs.rmSync(dir, { recursive: true, force: true });
});

async function engineFor(machine: Machine, project: string): Promise<ProgramEngine> {
    const plugin = await PluginProcess.start(machine.file);
    plugins.push(plugin);
    return new ProgramEngine(plugin, "dev", project);
}

/** The connection a plan gives its resources (the key file is VfioHost's to read; none here). */
const connectionOf = (plan: HostPlan) => (plan.connection ? { ...plan.connection } : undefined);

/** preview (nothing changes), up, a second up (nothing to do), then the checks, destroy, and the machine as before. */
async function converge(machine: Machine, engine: ProgramEngine, plan: HostPlan, check: (k: FakeKernel) => void): Promise<void> {
    const decls = declsOf(plan, connectionOf(plan));
    const before = machine.snapshot();
    const preview = await engine.previewProgram(decls);
    expect(preview.map((s) => s.op)).toEqual(decls.map(() => "create"));
    expect(machine.snapshot()).toEqual(before);

    const up = await engine.upProgram(decls);
    expect(up.map((s) => s.op)).toEqual(decls.map(() => "create"));
    check(machine.kernel());
    expect((await engine.upProgram(decls)).map((s) => s.op)).toEqual(decls.map(() => "same"));

    // Destroy goes newest first: the VMs stop before their devices are released.
    const destroyed = await engine.destroy();
    expect(destroyed.map((s) => s.urn.split("::").pop())).toEqual(decls.map((d) => d.name).reverse());
    expect(machine.snapshot()).toEqual(before);
}

const running = (k: FakeKernel) => Object.values(qemu(k).processes).filter((p) => p.status === "running");
const argvOf = (k: FakeKernel, name: string) => running(k).find((p) => p.argv.includes(name))?.argv ?? [];

test("looking-glass-gaming-vm: GPU + audio on vfio-pci, /dev/kvmfr0 of 64 MiB, the VM running on both", async () => {
    const run = await runProgram(path.join(EXAMPLES, "looking-glass-gaming-vm"), { project: "looking-glass-gaming-vm", config: { desktopUser: "alice" } });
    const [host] = run.hosts;
    const machine = new Machine(dir, "rig", (k) => {
        installKvmfr(k);
        qemu(k).hugepages = { total: 8192, free: 8192 };
        for (const f of ["/usr/share/OVMF/OVMF_CODE_4M.ms.fd", "/usr/share/OVMF/OVMF_VARS_4M.ms.fd", "/var/lib/vms/win11.qcow2"]) addFile(k, f);
    });
    const engine = await engineFor(machine, "looking-glass-gaming-vm");
    // The preview names the devices that will change driver before anything happens.
    const preview = formatSteps(await engine.previewProgram(declsOf(host.plan)));
    expect(preview).toContain("0000:01:00.1 (Audio device 8086:2668): snd_hda_intel → vfio-pci");
    await converge(machine, engine, host.plan, (k) => {
        expect(pci(k).devices["0000:01:00.0"].driver).toBe("vfio-pci");
        expect(pci(k).devices["0000:01:00.1"].driver).toBe("vfio-pci");
        expect(kvmfr(k)).toMatchObject({ loaded: true, sizes: [64] });
        const argv = argvOf(k, "win11");
        expect(argv).toEqual(expect.arrayContaining(["memory-backend-file,id=looking-glass,mem-path=/dev/kvmfr0,size=64M,share=yes"]));
        expect(argv.join(" ")).toContain("host=0000:01:00.1");
        expect(k.openers("/dev/vfio/7")).toHaveLength(1);
        expect(k.openers("/dev/kvmfr0")).toEqual(k.openers("/dev/vfio/7"));
    });
});

test("yaml-host converges the same host from host.yaml", async () => {
    const run = await runProgram(path.join(EXAMPLES, "yaml-host"), { project: "yaml-host" });
    const machine = new Machine(dir, "rig", (k) => {
        installKvmfr(k);
        qemu(k).hugepages = { total: 8192, free: 8192 };
        for (const f of ["/usr/share/OVMF/OVMF_CODE_4M.ms.fd", "/usr/share/OVMF/OVMF_VARS_4M.ms.fd", "/var/lib/vms/win11.qcow2"]) addFile(k, f);
    });
    await converge(machine, await engineFor(machine, "yaml-host"), run.hosts[0].plan, (k) => {
        expect(pci(k).devices["0000:01:00.0"].driver).toBe("vfio-pci");
        // The boot half is written for the next boot: GRUB's line and the early binding of the pair.
        expect(k.state.files["/boot/grub/grub.cfg"].data).toMatch(/ intel_iommu=on iommu=pt\n/);
        expect(k.state.files["/usr/local/sbin/pulumi-vfio-claim"].data).toContain("for dev in 0000:01:00.0 0000:01:00.1; do");
        expect(running(k).map((p) => p.argv[p.argv.indexOf("-name") + 1])).toEqual(["win11"]);
    });
});

/** A Tesla P40 with NVIDIA's vGPU host driver (mdev bus, before vGPU 17): 24 GiB split into P40-nQ types. */
function addP40(k: FakeKernel, address = "0000:41:00.0"): void {
    const s = pci(k);
    s.drivers.nvidia = { name: "nvidia", module: "nvidia", ids: ["10de:1b38"], dynamicIds: [] };
    if (!s.loaded.includes("nvidia")) s.loaded.push("nvidia");
    s.devices[address] = {
        address,
        vendor: "0x10de",
        device: "0x1b38",
        subsystemVendor: "0x10de",
        subsystemDevice: "0x11d9",
        class: "0x030200",
        driver: "nvidia",
        override: null,
        group: s.nextGroup++,
        resetMethods: ["bus"],
        numaNode: 0,
    };
    const type = (id: number, gib: number) => ({
        id: `nvidia-${id}`,
        name: `GRID P40-${gib}Q`,
        description: `num_heads=4, frl_config=60, framebuffer=${gib * 1024}M, max_resolution=7680x4320, max_instance=${24 / gib}`,
        deviceApi: "vfio-pci",
        cost: gib,
    });
    addMdevParent(k, { name: address, driver: "nvidia", capacity: 24, types: [type(46, 1), type(47, 2), type(49, 4), type(50, 6), type(51, 8)] });
}

test("mdev-split: three vGPUs of 4 GiB (the smallest type within the bounds), three VMs each holding one", async () => {
    const run = await runProgram(path.join(EXAMPLES, "mdev-split"), { project: "mdev-split" });
    const machine = new Machine(dir, "vgpu", (k) => {
        addP40(k);
        for (const f of ["/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd", "/var/lib/vms/alice.qcow2", "/var/lib/vms/bob.qcow2", "/var/lib/vms/carol.qcow2"]) addFile(k, f);
    });
    await converge(machine, await engineFor(machine, "mdev-split"), run.hosts[0].plan, (k) => {
        const devices = Object.values(mdev(k).devices);
        expect(devices.map((d) => [d.parent, d.type])).toEqual([
            ["0000:41:00.0", "nvidia-49"],
            ["0000:41:00.0", "nvidia-49"],
            ["0000:41:00.0", "nvidia-49"],
        ]);
        expect(running(k)).toHaveLength(3);
        for (const d of devices) expect(running(k).filter((p) => p.argv.join(" ").includes(`sysfsdev=/sys/bus/mdev/devices/${d.uuid}`))).toHaveLength(1);
    });
});

test("sriov-vfs: four VFs without a host driver, two bound to vfio-pci, one per VM", async () => {
    const run = await runProgram(path.join(EXAMPLES, "sriov-vfs"), { project: "sriov-vfs" });
    const machine = new Machine(dir, "sriov", (k) => {
        for (const f of ["/var/lib/vms/worker-0.qcow2", "/var/lib/vms/worker-1.qcow2"]) addFile(k, f);
    });
    await converge(machine, await engineFor(machine, "sriov-vfs"), run.hosts[0].plan, (k) => {
        const d = pci(k).devices;
        expect(d["0000:03:00.0"].sriov).toMatchObject({ numVfs: 4, autoprobe: false });
        expect(["0000:03:00.1", "0000:03:00.2", "0000:03:00.3", "0000:03:00.4"].map((a) => d[a].driver)).toEqual(["vfio-pci", "vfio-pci", null, null]);
        expect(argvOf(k, "worker-0").join(" ")).toContain("host=0000:03:00.1");
        expect(argvOf(k, "worker-1").join(" ")).toContain("host=0000:03:00.2");
    });
});

test("fleet-over-ssh: each host file converges its own machine", async () => {
    const run = await runProgram(path.join(EXAMPLES, "fleet-over-ssh"), { project: "fleet-over-ssh" });
    expect(run.hosts.map((h) => h.plan.host)).toEqual(["render-1", "render-2"]);
    for (const host of run.hosts) {
        expect(host.plan.connection).toEqual({ host: `${host.plan.host}.lan`, user: "root" });
        // One machine per host: every plugin process sees only its own (the fake machine's file stands in for SSH).
        const machine = new Machine(dir, host.plan.host, (k) => ["/var/lib/vms/blender.qcow2", "/var/lib/vms/scratch.qcow2"].forEach((f) => addFile(k, f)));
        await converge(machine, await engineFor(machine, "fleet-over-ssh"), host.plan, (k) => {
            expect(pci(k).devices["0000:01:00.0"].driver).toBe("vfio-pci");
            const names = running(k).map((p) => p.argv[p.argv.indexOf("-name") + 1]).sort();
            expect(names).toEqual(host.plan.host === "render-1" ? ["blender"] : ["blender", "scratch"]);
        });
    }
});

// A type change is a replacement: Pulumi stops the VM that holds the mdev (replaceWith) before the mdev is replaced,
// so check must not refuse it; delete still refuses while the device is held.
test("changing an mdev's type stops its VM first, recreates the mdev, and starts the VM on the new one", async () => {
    const text = (type: string, memoryMb: number) =>
        `mdevs:\n  serial: { parent: mtty, type: ${type} }\nvms:\n  vm1: { accel: tcg, memoryMb: ${memoryMb}, network: { mode: none }, shutdownTimeoutSeconds: 0, mdevs: [serial] }\n`;
    const plan = (t: string) => {
        const { parseHostDefinition } = require("../../sdk/hostDefinition") as typeof import("../../sdk/hostDefinition");
        const { planHost } = require("../../sdk/hostPlan") as typeof import("../../sdk/hostPlan");
        return planHost("lab", parseHostDefinition(t), { project: "p", stack: "dev" });
    };
    const machine = new Machine(dir, "lab", () => undefined);
    const engine = await engineFor(machine, "p");
    await engine.upProgram(declsOf(plan(text("mtty-1", 256))));
    const uuid = Object.keys(mdev(machine.kernel()).devices)[0];
    const pid1 = engine.get("lab-vm1")!.outputs.pid;

    const next = declsOf(plan(text("mtty-2", 384)));
    const preview = await engine.previewProgram(next);
    expect(preview.map((s) => [s.urn.split("::").pop(), s.op])).toEqual([
        ["lab-serial", "replace"],
        ["lab-vm1", "replace"],
    ]);
    const steps = await engine.upProgram(next);
    expect(steps.map((s) => [s.urn.split("::").pop(), s.op])).toEqual([
        ["lab-serial", "replace"],
        ["lab-vm1", "replace"],
    ]);
    const k = machine.kernel();
    expect(Object.values(mdev(k).devices).map((d) => [d.uuid, d.type])).toEqual([[uuid, "mtty-2"]]);
    const vm = engine.get("lab-vm1")!.outputs;
    expect(vm.pid).not.toBe(pid1);
    expect(argvOf(k, "vm1")).toEqual(expect.arrayContaining(["384M"]));
    await engine.destroy();
    expect(Object.keys(mdev(machine.kernel()).devices)).toEqual([]);
});
