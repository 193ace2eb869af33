/**
 * KvmfrDevice through the real dynamic-provider plugin, as the Pulumi engine drives it, against a fake machine in
 * a state file (the plugin and the test see the same machine and its kvmfr module).
 */
import { installKvmfr, kvmfr } from "../fake/kvmfr";
import { CheckFailedError, Engine, ResourceDecl, UNKNOWN, serializedProvider, fakeMachineSuite } from "./harness";

const TYPE = "pulumi-nodejs:dynamic/vfio:KvmfrDevice";
const fake = fakeMachineSuite();

const machine = fake.machine;
const editMachine = fake.edit;
const lg = (name: string, inputs: Record<string, unknown>): ResourceDecl => ({ name, kind: "kvmfrDevice", type: TYPE, inputs });


test("a host without the kvmfr module fails at preview with how to install Looking Glass's DKMS module", async () => {
    const err = await new Engine(fake.plugin).preview([lg("lg", { index: 0, sizeMb: 32 })]).catch((e) => e);
    expect(err).toBeInstanceOf(CheckFailedError);
    expect(err.failures[0].reason).toMatch(/the kvmfr kernel module is not installed on fake.*dkms install \./);
});

test("preview shows the computed size and the planned file and module changes; up makes both devices; destroy undoes", async () => {
    editMachine(installKvmfr);
    const engine = new Engine(fake.plugin);
    const decls = [lg("lg0", { index: 0, width: 1920, height: 1080 }), lg("lg1", { index: 1, sizeMb: 64, owner: "alice" })];
    const [p0] = await engine.preview(decls.slice(0, 1));
    expect(p0.inputs!.sizeMb).toBe(32);
    expect(p0.inputs!.plan).toEqual(["/etc/modprobe.d/kvmfr.conf: static_size_mb=(none) → 32", "/etc/udev/rules.d/99-kvmfr.rules: kvmfr0 root:kvm 0660", "modprobe kvmfr (creates /dev/kvmfr0..0)"]);

    // Both in one program: lg1 waits for lg0 in the preview, and is created after it (declared order = dependsOn).
    const both = await engine.preview(decls);
    expect(both[1].inputs!.plan[0]).toMatch(/kvmfr1 needs the devices below it first/);
    expect((await engine.up(decls)).map((s) => s.op)).toEqual(["create", "create"]);
    expect(kvmfr(machine()).sizes).toEqual([32, 64]);
    expect(engine.get("lg1")!.outputs).toMatchObject({ path: "/dev/kvmfr1", sizeMb: 64, sizeBytes: 67108864, uid: 1000, gid: 104 });
    expect(engine.get("lg0")!.outputs.qemuArgs).toEqual(["-object", "memory-backend-file,id=looking-glass,mem-path=/dev/kvmfr0,size=32M,share=yes", "-device", "ivshmem-plain,id=shmem0,memdev=looking-glass"]);

    // Someone opens up the permissions by hand: refresh shows it, up repairs it.
    editMachine((k) => k.exec(["chmod", "0666", "/dev/kvmfr0"]));
    expect((await engine.refresh()).map((s) => s.op)).toEqual(["refresh-drift"]);
    expect(engine.get("lg0")!.outputs.actual.mode).toBe("0666");
    expect((await engine.up(decls)).map((s) => s.op)).toEqual(["update", "same"]);
    expect(machine().stat("/dev/kvmfr0")).toMatch(/^character special file 660 /);

    expect((await engine.destroy()).map((s) => s.op)).toEqual(["delete", "delete"]);
    const k = machine();
    expect(kvmfr(k).loaded).toBe(false);
    expect(k.state.files["/etc/modprobe.d/kvmfr.conf"]).toBeUndefined();
});

test("resizing while a VM holds the device is refused at preview, naming the holder; after it stops, up reloads", async () => {
    editMachine(installKvmfr);
    const engine = new Engine(fake.plugin);
    await engine.up([lg("lg0", { index: 0, sizeMb: 32 })]);
    let pid = 0;
    editMachine((k) => (pid = k.hold("/dev/kvmfr0", "qemu-system-x86")));
    const err = await engine.preview([lg("lg0", { index: 0, sizeMb: 64 })]).catch((e) => e);
    expect(err.failures[0]).toMatchObject({ property: "sizeMb" });
    expect(err.failures[0].reason).toMatch(new RegExp(`/dev/kvmfr0 is held open by PID ${pid}. Stop the VMs that use Looking Glass first`));
    editMachine((k) => k.release(pid));
    expect((await engine.up([lg("lg0", { index: 0, sizeMb: 64 })])).map((s) => s.op)).toEqual(["update"]);
    expect(kvmfr(machine()).sizes).toEqual([64]);
});

test("preview tolerates unknown inputs", async () => {
    const urn = "urn:pulumi:dev::harness::" + TYPE + "::lg";
    const checked = await fake.plugin.check(urn, {}, { index: UNKNOWN, sizeMb: UNKNOWN, __provider: await serializedProvider("kvmfrDevice") });
    expect(checked.failures).toEqual([]);
});
