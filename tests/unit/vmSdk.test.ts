/**
 * The Pulumi face of KvmfrDevice and PassthroughVm under `pulumi.runtime.setMocks`: type tokens, the thin provider,
 * and resources given as inputs (an IommuBinding as a device, a KvmfrDevice as shared memory) travelling as their
 * values — with the dependency that makes Pulumi delete the VM before the binding.
 */
import * as pulumi from "@pulumi/pulumi";

const created: pulumi.runtime.MockResourceArgs[] = [];
pulumi.runtime.setMocks(
    {
        newResource(args) {
            created.push(args);
            const extra: Record<string, unknown> =
                args.type.endsWith(":IommuBinding")
                    ? { address: "0000:01:00.0", members: [{ address: "0000:01:00.0", managed: true }, { address: "0000:01:00.1", managed: true }, { address: "0000:00:1c.0", managed: false }] }
                    : args.type.endsWith(":KvmfrDevice")
                      ? { path: "/dev/kvmfr0", sizeMb: 64 }
                      : args.type.endsWith(":MdevInstance")
                        ? args.inputs.parent === "0000:41:00.0"
                            ? { uuid: "a297db4a-f4c2-11e6-90f6-d3b88d6c9525", typeId: "NVIDIA L40S-2Q", backend: "nvidia-vgpu", address: "0000:41:00.4" }
                            : { uuid: "3b1f6a7e-8f1c-4d2a-9d3e-2a1b0c9d8e7f", typeId: "mtty-2", backend: "mdev", address: null }
                        : {};
            return { id: `${args.name}-id`, state: { ...args.inputs, ...extra } };
        },
        call(args) {
            return args.inputs;
        },
    },
    "proj",
    "stack",
    false,
);

// eslint-disable-next-line @typescript-eslint/no-var-requires
const vfio: typeof import("../../sdk") = require("../../sdk");
const value = <T>(o: pulumi.Output<T>): Promise<T> => new Promise((r) => o.apply((v) => r(v)));

test("KvmfrDevice and PassthroughVm register under vfio with thin providers", async () => {
    const lg = new vfio.KvmfrDevice("lg", { index: 0, width: 2560, height: 1440 });
    const vm = new vfio.PassthroughVm("vm", { name: "win11", accel: "tcg" });
    await value(lg.path);
    await value(vm.name);
    const types = created.map((c) => c.type);
    expect(types).toEqual(expect.arrayContaining(["pulumi-nodejs:dynamic/vfio:KvmfrDevice", "pulumi-nodejs:dynamic/vfio:PassthroughVm"]));
    for (const c of created) expect(String(c.inputs.__provider)).toContain('require("pulumi-vfio/provider")');
});

test("an IommuBinding as a device passes its address and bound functions; a KvmfrDevice passes path and size", async () => {
    const gpu = new vfio.IommuBinding("gpu", { device: "01:00.0" });
    const lg = new vfio.KvmfrDevice("lg2", { index: 0, sizeMb: 64 });
    const vm = new vfio.PassthroughVm("vm2", { name: "gaming", devices: [gpu, "0000:03:00.1"], sharedMemory: lg });
    await value(vm.name);
    const r = created.find((c) => c.name === "vm2")!;
    expect(r.inputs.devices).toEqual([{ address: "0000:01:00.0", functions: ["0000:01:00.0", "0000:01:00.1"] }, "0000:03:00.1"]);
    expect(r.inputs.sharedMemory).toEqual({ path: "/dev/kvmfr0", sizeMb: 64 });
});

test("the connection is a secret", async () => {
    const vm = new vfio.PassthroughVm("remote", { name: "r", connection: { host: "gpu-box", privateKey: "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n" } });
    await value(vm.name);
    const r = created.find((c) => c.name === "remote")!;
    expect(r.inputs.connection[pulumi.runtime.specialSigKey]).toBe(pulumi.runtime.specialSecretSig);
});

test("MdevInstances pass their UUID and type; an NVIDIA vGPU 17+ also the VF that carries it", async () => {
    const mtty = new vfio.MdevInstance("mtty", { parent: "mtty", type: "mtty-2" });
    const vgpu = new vfio.MdevInstance("vgpu", { parent: "0000:41:00.0", type: "NVIDIA L40S-2Q" });
    const vm = new vfio.PassthroughVm("vm3", { name: "vgpu-vm", mdevs: [mtty, vgpu] });
    await value(vm.name);
    const r = created.find((c) => c.name === "vm3")!;
    expect(r.inputs.mdevs).toEqual([
        { uuid: "3b1f6a7e-8f1c-4d2a-9d3e-2a1b0c9d8e7f", type: "mtty-2" },
        { uuid: "a297db4a-f4c2-11e6-90f6-d3b88d6c9525", type: "NVIDIA L40S-2Q", address: "0000:41:00.4" },
    ]);
});
