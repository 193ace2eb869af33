/**
 * Every example (and the root program) runs under `pulumi.runtime.setMocks` inside a root Stack, and the resource
 * graph the engine would receive is checked: types, names, parents, the dependencies that make `pulumi up` start VMs
 * after their devices and `pulumi destroy` stop them first, the `replaceWith` that stops a VM before a device it holds
 * is replaced, and the inputs that carry one resource's outputs into another.
 */
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { ProgramRun, Registration, nameOf, runProgram } from "../programs/runProgram";

const REPO = path.resolve(__dirname, "..", "..");
const EXAMPLES = path.join(REPO, "examples");
const VM = "pulumi-nodejs:dynamic/vfio:PassthroughVm";
const COMPONENT = "pulumi-vfio:index:VfioHost";

function graph(run: ProgramRun) {
    const byName = new Map(run.registrations.map((r) => [r.name, r]));
    const get = (name: string): Registration => {
        const r = byName.get(name);
        if (!r) throw new Error(`no resource ${name}; registered: ${[...byName.keys()].join(", ")}`);
        return r;
    };
    const deps = (name: string) => get(name).dependencies.map(nameOf).sort();
    const replaceWith = (name: string) => get(name).replaceWith.map(nameOf).sort();
    const parent = (name: string) => nameOf(get(name).parent);
    const custom = run.registrations.filter((r) => r.custom && r.type.startsWith("pulumi-nodejs:dynamic/vfio:"));
    const kinds = custom.map((r) => `${r.type.split(":").pop()} ${r.name}`);
    return { get, deps, replaceWith, parent, custom, kinds };
}

/** Every VM depends on (and is replaced with) exactly the devices it uses, and comes after them. */
function expectVmsAfterTheirDevices(run: ProgramRun) {
    const g = graph(run);
    const order = g.custom.map((r) => r.name);
    for (const vm of g.custom.filter((r) => r.type === VM)) {
        // A changed boot configuration takes effect at the next boot: it orders the VM, never restarts it.
        const held = g.deps(vm.name).filter((d) => order.includes(d) && g.get(d).type !== "pulumi-nodejs:dynamic/vfio:BootConfig");
        expect(g.replaceWith(vm.name)).toEqual(held);
        for (const d of g.deps(vm.name)) expect(order.indexOf(d)).toBeLessThan(order.indexOf(vm.name));
    }
}

test("every example directory is a Pulumi project with a program and a README", () => {
    const dirs = fs.readdirSync(EXAMPLES).sort();
    expect(dirs).toEqual(["fleet-over-ssh", "looking-glass-gaming-vm", "mdev-split", "sriov-vfs", "yaml-host"]);
    for (const d of dirs) {
        const files = fs.readdirSync(path.join(EXAMPLES, d));
        expect(files).toEqual(expect.arrayContaining(["Pulumi.yaml", "README.md", "index.ts", "package.json"]));
        expect(fs.readFileSync(path.join(EXAMPLES, d, "Pulumi.yaml"), "utf8")).toMatch(new RegExp(`^name: ${d}$`, "m"));
    }
});

test("looking-glass-gaming-vm: binding, kvmfr and VM under one VfioHost; the VM takes the GPU's functions and /dev/kvmfr0", async () => {
    const run = await runProgram(path.join(EXAMPLES, "looking-glass-gaming-vm"), { project: "looking-glass-gaming-vm", config: { gpu: "0000:0b:00.0", desktopUser: "alice" } });
    const g = graph(run);
    expect(g.get("gaming-rig").type).toBe(COMPONENT);
    expect(g.kinds).toEqual(["BootConfig gaming-rig-boot", "IommuBinding gaming-rig-gpu", "KvmfrDevice gaming-rig-looking-glass", "PassthroughVm gaming-rig-win11"]);
    for (const r of g.custom) expect(g.parent(r.name)).toBe("gaming-rig");
    expect(g.deps("gaming-rig-win11")).toEqual(["gaming-rig-boot", "gaming-rig-gpu", "gaming-rig-looking-glass"]);
    expect(g.get("gaming-rig-boot").inputs).toMatchObject({ kernelParameters: ["intel_iommu=on", "iommu=pt"], earlyBinding: ["0000:0b:00.0", "0000:0b:00.1"] });
    expectVmsAfterTheirDevices(run);

    expect(g.get("gaming-rig-gpu").inputs).toMatchObject({ device: "0000:0b:00.0", persistent: true });
    expect(g.get("gaming-rig-looking-glass").inputs).toMatchObject({ index: 0, width: 2560, height: 1440, owner: "alice" });
    const vm = g.get("gaming-rig-win11").inputs;
    expect(vm).toMatchObject({ name: "win11", memoryMb: 16384, hugepages: true, hideHypervisor: true, autostart: true });
    expect(vm.devices).toEqual([{ address: "0000:0b:00.0", functions: ["0000:0b:00.0"] }]);
    expect(vm.sharedMemory).toEqual({ path: "/dev/kvmfr0", sizeMb: 64 });
    expect(run.outputs.qemuCommandLine).toEqual(["qemu-system-x86_64", "-name", "win11"]);
});

test("yaml-host makes the same resources from host.yaml as looking-glass-gaming-vm does from TypeScript", async () => {
    const ts = graph(await runProgram(path.join(EXAMPLES, "looking-glass-gaming-vm"), { project: "p", config: { desktopUser: "root" } }));
    const yaml = graph(await runProgram(path.join(EXAMPLES, "yaml-host"), { project: "p" }));
    expect(yaml.kinds).toEqual(ts.kinds);
    const strip = (i: Record<string, any>) => {
        const c = { ...i };
        delete c.__provider;
        return c;
    };
    for (const r of ts.custom) expect(strip(yaml.get(r.name).inputs)).toEqual(strip(r.inputs));
    for (const r of ts.custom) expect(yaml.deps(r.name)).toEqual(ts.deps(r.name));
});

test("mdev-split: one vGPU per VM chosen by video memory, each VM after (and replaced with) its own vGPU", async () => {
    const run = await runProgram(path.join(EXAMPLES, "mdev-split"), { project: "mdev-split", stack: "prod", config: { vms: ["ann", "ben"], vramMiB: 2048 } });
    const g = graph(run);
    expect(g.kinds).toEqual(["BootConfig vgpu-host-boot", "MdevInstance vgpu-host-ann-vgpu", "MdevInstance vgpu-host-ben-vgpu", "PassthroughVm vgpu-host-ann", "PassthroughVm vgpu-host-ben"]);
    expect(g.replaceWith("vgpu-host-ann")).toEqual(["vgpu-host-ann-vgpu"]);
    expect(g.replaceWith("vgpu-host-ben")).toEqual(["vgpu-host-ben-vgpu"]);
    expectVmsAfterTheirDevices(run);
    const mdev = g.get("vgpu-host-ann-vgpu").inputs;
    expect(mdev).toMatchObject({ parent: "0000:41:00.0", vram: { min: 2048, max: 4096 } });
    // The stable UUID the MdevInstance class would derive (project, stack, name), so a replay adopts the same device.
    const { defaultMdevUuid } = await import("../../provider/sysfs/mdev");
    expect(mdev.uuid).toBe(defaultMdevUuid("mdev-split", "prod", "vgpu-host-ann-vgpu"));
    expect(g.get("vgpu-host-ann").inputs.mdevs).toEqual([{ uuid: mdev.uuid, type: "chosen-by-vram" }]);
});

test("sriov-vfs: the VFs, one vfio-pci binding per VF a VM uses (fed by the VF addresses), then the VMs", async () => {
    const run = await runProgram(path.join(EXAMPLES, "sriov-vfs"), { project: "sriov-vfs", config: { physicalFunction: "0000:03:00.0", vfCount: 3 } });
    const g = graph(run);
    expect(g.kinds).toEqual([
        "BootConfig sriov-host-boot",
        "VirtualFunctions sriov-host-vfs",
        "IommuBinding sriov-host-vfs.vf0",
        "IommuBinding sriov-host-vfs.vf1",
        "PassthroughVm sriov-host-worker-0",
        "PassthroughVm sriov-host-worker-1",
    ]);
    expect(g.get("sriov-host-vfs").inputs).toMatchObject({ physicalFunction: "0000:03:00.0", count: 3 });
    // The boot half comes first: every device and VM of the host waits for it.
    expect(g.deps("sriov-host-vfs.vf1")).toEqual(["sriov-host-boot", "sriov-host-vfs"]);
    expect(g.get("sriov-host-vfs.vf1").inputs).toMatchObject({ device: "0000:03:00.2", driver: "vfio-pci" });
    expect(g.deps("sriov-host-worker-1")).toEqual(["sriov-host-boot", "sriov-host-vfs.vf1"]);
    expect(g.get("sriov-host-worker-1").inputs.devices).toEqual([{ address: "0000:03:00.2", functions: ["0000:03:00.2"] }]);
    expectVmsAfterTheirDevices(run);
    expect(run.outputs.vfAddresses).toEqual(["0000:03:00.1", "0000:03:00.2", "0000:03:00.3"]);
});

test("fleet-over-ssh: one VfioHost per host file, each resource with its own host's connection as a secret", async () => {
    const run = await runProgram(path.join(EXAMPLES, "fleet-over-ssh"), { project: "fleet-over-ssh" });
    const g = graph(run);
    expect(run.registrations.filter((r) => r.type === COMPONENT).map((r) => r.name)).toEqual(["render-1", "render-2"]);
    // Registration order across hosts is Pulumi's business (each VM waits only for its own devices).
    expect([...g.kinds].sort()).toEqual([
        "BootConfig render-1-boot",
        "BootConfig render-2-boot",
        "IommuBinding render-1-gpu",
        "IommuBinding render-2-gpu",
        "IommuBinding render-2-nvme.vf0",
        "PassthroughVm render-1-blender",
        "PassthroughVm render-2-blender",
        "PassthroughVm render-2-scratch",
        "VirtualFunctions render-2-nvme",
    ]);
    for (const r of g.custom) {
        const host = g.parent(r.name);
        expect(r.name.startsWith(`${host}-`)).toBe(true);
        // Serialized as a secret: the engine encrypts it in state and masks it in logs.
        expect(r.inputs.connection["4dabf18193072939515e22adb298388d"]).toBe("1b47061264138c4ac30d75fd1eb44270");
        expect(r.inputs.connection.value).toMatchObject({ host: `${host}.lan`, user: "root" });
    }
    expectVmsAfterTheirDevices(run);
    expect(Object.keys(run.outputs.hosts)).toEqual(["render-1", "render-2"]);
});

test("fleet-over-ssh: a key from config joins every host's connection, still a secret", async () => {
    const run = await runProgram(path.join(EXAMPLES, "fleet-over-ssh"), { project: "fleet-over-ssh", config: { sshPrivateKey: "-----BEGIN OPENSSH PRIVATE KEY-----\nfleet\n" } });
    const vm = graph(run).get("render-2-scratch");
    expect(vm.inputs.connection.value).toMatchObject({ host: "render-2.lan", privateKey: "-----BEGIN OPENSSH PRIVATE KEY-----\nfleet\n" });
});

describe("the root program", () => {
    let dir: string;
    beforeEach(() => {
        dir = fs.mkdtempSync(path.join(os.tmpdir(), "pv-root-"));
    });
    afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

    const run = (config: Record<string, unknown> = {}) => runProgram(dir, { project: "pulumi-vfio-host", main: path.join(REPO, "program", "index.ts"), config });

    test("converges host.yaml from the project directory, locally when it has no connection", async () => {
        fs.writeFileSync(
            path.join(dir, "host.yaml"),
            "bindings:\n  gpu: { device: \"01:00.0\" }\nmdevs:\n  serial: { parent: mtty, type: mtty-2 }\nvms:\n  vm1: { accel: tcg, memoryMb: 256, devices: [gpu], mdevs: [serial] }\n",
        );
        const r = await run();
        const g = graph(r);
        expect(g.kinds).toEqual(["IommuBinding host-gpu", "MdevInstance host-serial", "PassthroughVm host-vm1"]);
        for (const c of g.custom) expect(c.inputs.connection).toBeUndefined();
        expect(r.outputs.resources).toEqual(["IommuBinding host-gpu", "MdevInstance host-serial", "PassthroughVm host-vm1"]);
        expectVmsAfterTheirDevices(r);
    });

    test("config hostFile picks another file, whose name names the host", async () => {
        fs.mkdirSync(path.join(dir, "hosts"));
        fs.writeFileSync(path.join(dir, "hosts", "gpu-box.yaml"), "connection: { host: gpu-box.lan }\nbindings:\n  gpu: { device: \"0000:01:00.0\" }\n");
        const g = graph(await run({ hostFile: "hosts/gpu-box.yaml" }));
        expect(g.kinds).toEqual(["IommuBinding gpu-box-gpu"]);
        expect(g.get("gpu-box-gpu").inputs.connection.value).toEqual({ host: "gpu-box.lan" });
    });

    test("one naming rule: a TypeScript program over the same host.yaml names every resource as the root program does, and carries the older component-named resources over by alias", async () => {
        fs.writeFileSync(path.join(dir, "host.yaml"), "name: gaming-rig\nbindings:\n  gpu: { device: \"01:00.0\" }\nvms:\n  win: { accel: tcg, memoryMb: 256, devices: [gpu] }\n");
        fs.writeFileSync(
            path.join(dir, "index.ts"),
            `import * as vfio from "pulumi-vfio";\nconst host = new vfio.VfioHost("workstation", vfio.loadHostDefinition("host.yaml"));\nexport const names = host.plan.resources.map((r) => r.name);\n`,
        );
        const root = graph(await run());
        const ts = await runProgram(dir, { project: "pulumi-vfio-host", main: path.join(dir, "index.ts") });
        expect(root.kinds).toEqual(["IommuBinding gaming-rig-gpu", "PassthroughVm gaming-rig-win"]);
        expect(graph(ts).kinds).toEqual(root.kinds);
        const aliases = Object.fromEntries(ts.registrations.filter((r) => r.custom).map((r) => [r.name, r.aliases.map((a) => (a.includes("::") ? nameOf(a) : a))]));
        expect(aliases).toEqual({ "gaming-rig-gpu": ["workstation-gpu"], "gaming-rig-win": ["workstation-win"] });
        // The root program's component has the definition's name: no alias needed there.
        expect(root.custom.every((c) => c.aliases.length === 0)).toBe(true);
    });

    test("a bad host file stops the program with the positions, and registers nothing of the host", async () => {
        fs.writeFileSync(path.join(dir, "host.yaml"), "bindings:\n  gpu: { device: \"01:00.0\", drivr: vfio-pci }\n");
        await expect(run()).rejects.toThrow(/host\.yaml:2:29: bindings\.gpu\.drivr: unknown key "drivr"; did you mean "driver"\?/);
    });
});
