/**
 * PassthroughVm through the real dynamic-provider plugin against a fake machine in a state file: the fake QEMU's
 * QMP endpoint lives in the plugin process, its effects (processes, held devices) in the shared state.
 */
import { pci } from "../fake/pci";
import { crashVm, qemu } from "../fake/qemu";
import { CheckFailedError, Engine, ResourceDecl, UNKNOWN, serializedProvider, fakeMachineSuite } from "./harness";

const VM = "pulumi-nodejs:dynamic/vfio:PassthroughVm";
const BINDING = "pulumi-nodejs:dynamic/vfio:IommuBinding";
const fake = fakeMachineSuite();

const machine = fake.machine;
const editMachine = fake.edit;
const gpu: ResourceDecl = { name: "gpu", kind: "iommuBinding", type: BINDING, inputs: { device: "01:00.0" } };
const vm = (inputs: Record<string, unknown> = {}): ResourceDecl => ({
    name: "vm",
    kind: "passthroughVm",
    type: VM,
    inputs: { name: "gpu-vm", accel: "tcg", memoryMb: 256, network: { mode: "none" }, shutdownTimeoutSeconds: 0, devices: ["01:00.0"], sharedMemory: { path: "/dev/shm/looking-glass", sizeMb: 32 }, ...inputs },
});


test("preview of binding + VM shows the VM's exact QEMU command line and starts nothing", async () => {
    const steps = await new Engine(fake.plugin).preview([gpu, vm()]);
    expect(steps.map((s) => s.op)).toEqual(["create", "create"]);
    const argv: string[] = steps[1].inputs!.commandLine;
    expect(argv[0]).toBe("qemu-system-x86_64");
    expect(argv).toContain("vfio-pci,host=0000:01:00.0,multifunction=on,id=hostdev0,bus=rp0,addr=00.0");
    expect(argv).toContain("vfio-pci,host=0000:01:00.1,id=hostdev1,bus=rp0,addr=00.1");
    expect(argv).toContain("memory-backend-file,id=looking-glass,mem-path=/dev/shm/looking-glass,size=32M,share=yes");
    expect(qemu(machine()).started).toEqual([]);
});

test("up runs the VM on the bound group; a crash is drift up repairs; destroy stops the VM before releasing the group", async () => {
    const engine = new Engine(fake.plugin);
    expect((await engine.up([gpu, vm()])).map((s) => s.op)).toEqual(["create", "create"]);
    const out = engine.get("vm")!.outputs;
    expect(out).toMatchObject({ status: "running", missingDevices: [] });
    expect(machine().openers("/dev/vfio/7")).toEqual([out.pid]);
    expect((await engine.up([gpu, vm()])).map((s) => s.op)).toEqual(["same", "same"]);

    // While the VM runs, the binding cannot be released (the kernel would block in unbind).
    const b = engine.get("gpu")!;
    await expect(fake.plugin.delete(b.urn, b.id, { ...b.outputs, __provider: await serializedProvider("iommuBinding") })).rejects.toThrow(/held open by PID \d+ \(qemu-system-x86\)/);

    editMachine((k) => crashVm(k, out.pid));
    expect((await engine.refresh()).map((s) => s.op)).toEqual(["refresh-drift"]);
    expect(engine.get("vm")!.outputs.status).toBe("stopped");
    expect((await engine.up([gpu, vm()])).map((s) => s.op)).toEqual(["same", "update"]);
    const restarted = engine.get("vm")!.outputs;
    expect(restarted.status).toBe("running");
    expect(restarted.pid).not.toBe(out.pid);

    // A new command line shows in preview and restarts the VM on up.
    const [, step] = await engine.preview([gpu, vm({ memoryMb: 512 })]);
    expect(step.op).toBe("update");
    expect(step.inputs!.commandLine).toContain("512M");
    await engine.up([gpu, vm({ memoryMb: 512 })]);
    expect(qemu(machine()).processes[String(engine.get("vm")!.outputs.pid)].argv).toContain("512M");

    expect((await engine.destroy()).map((s) => s.op)).toEqual(["delete", "delete"]);
    const k = machine();
    expect(Object.keys(qemu(k).processes)).toEqual([]);
    expect(pci(k).devices["0000:01:00.0"].driver).toBe("bochs-drm");
    expect(pci(k).devices["0000:01:00.1"].driver).toBe("snd_hda_intel");
});

test("running: false stops the VM gracefully and keeps the resource", async () => {
    const engine = new Engine(fake.plugin);
    await engine.up([gpu, vm()]);
    expect((await engine.up([gpu, vm({ running: false })])).map((s) => s.op)).toEqual(["same", "update"]);
    expect(engine.get("vm")!.outputs).toMatchObject({ status: "stopped", pid: null });
    expect(Object.keys(qemu(machine()).processes)).toEqual([]);
    expect((await engine.refresh()).map((s) => s.op)).toEqual([]);
    await engine.destroy();
});

test("bad input fails at preview with the field named", async () => {
    const cases: [Record<string, unknown>, string, RegExp][] = [
        [{ name: "../../etc" }, "name", /is not a VM name/],
        [{ cpu: { cores: 2, pinning: [0] } }, "cpu.pinning", /1 host CPU\(s\) for 2 vCPU\(s\)/],
        [{ devices: ["00:10.0"] }, "devices[0]", /PCI bridge/],
        [{ sharedMemory: { path: "/etc/passwd", sizeMb: 32 } }, "sharedMemory.path", /"\/etc\/passwd" is not a valid path/],
        [{ colour: "red" }, "colour", /unknown key "colour"/],
    ];
    for (const [inputs, property, reason] of cases) {
        const err = await new Engine(fake.plugin).preview([vm(inputs)]).catch((e) => e);
        expect(err).toBeInstanceOf(CheckFailedError);
        expect((err as CheckFailedError).failures.find((f) => f.property === property)?.reason).toMatch(reason);
    }
});

test("up refuses to start on a group that is not bound, with every problem named, and leaves nothing running", async () => {
    const err = await new Engine(fake.plugin).up([vm()]).catch((e) => e);
    expect(err.message).toMatch(/VM gpu-vm cannot start: 0000:01:00.0 is bound to bochs-drm, not vfio-pci/);
    expect(qemu(machine()).started).toEqual([]);
});

test("preview tolerates unknown inputs (device addresses from a binding created in the same up)", async () => {
    const urn = "urn:pulumi:dev::harness::" + VM + "::vm";
    const news = { ...vm().inputs, devices: [UNKNOWN], sharedMemory: UNKNOWN, __provider: await serializedProvider("passthroughVm") };
    const checked = await fake.plugin.check(urn, {}, news);
    expect(checked.failures).toEqual([]);
    expect(checked.inputs.commandLine).toBeUndefined();
});
