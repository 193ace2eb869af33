/**
 * The Pulumi face under `pulumi.runtime.setMocks`: the type token users see in `pulumi preview`, the serialized
 * provider stored in state, and the SSH connection kept secret.
 */
import * as pulumi from "@pulumi/pulumi";

const created: pulumi.runtime.MockResourceArgs[] = [];
pulumi.runtime.setMocks(
    {
        newResource(args) {
            created.push(args);
            return { id: `${args.name}-id`, state: { ...args.inputs, address: "0000:01:00.0", group: 7, vfioDevice: "/dev/vfio/7" } };
        },
        call(args) {
            return args.inputs;
        },
    },
    "proj",
    "stack",
    false,
);

// Imported after setMocks so resources register with the mock monitor.
// eslint-disable-next-line @typescript-eslint/no-var-requires
const vfio: typeof import("../../sdk") = require("../../sdk");

const value = <T>(o: pulumi.Output<T>): Promise<T> => new Promise((r) => o.apply((v) => r(v)));
const secret = <T>(o: pulumi.Output<T>): Promise<boolean> => (o as any).isSecret as Promise<boolean>;

test("an IommuBinding registers as pulumi-nodejs:dynamic/vfio:IommuBinding with a thin serialized provider", async () => {
    const b = new vfio.IommuBinding("gpu", { device: "01:00.0", persistent: true });
    expect(await value(b.vfioDevice)).toBe("/dev/vfio/7");
    const r = created.find((c) => c.name === "gpu")!;
    expect(r.type).toBe("pulumi-nodejs:dynamic/vfio:IommuBinding");
    expect(r.inputs.device).toBe("01:00.0");
    expect(r.inputs.persistent).toBe(true);
    expect(String(r.inputs.__provider)).toContain('require("pulumi-vfio/provider")');
});

test("the connection (private key, password) is a secret output", async () => {
    const b = new vfio.IommuBinding("remote-gpu", { device: "01:00.0", connection: { host: "gpu-box", privateKey: "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n" } });
    const conn = (b as any).connection as pulumi.Output<unknown>;
    expect(await secret(conn)).toBe(true);
    // What the engine receives (and stores) is the secret envelope, not the plain key.
    const r = created.find((c) => c.name === "remote-gpu")!;
    expect(r.inputs.connection[pulumi.runtime.specialSigKey]).toBe(pulumi.runtime.specialSecretSig);
    expect(r.inputs.connection.value.host).toBe("gpu-box");
});

test("every declared output of every resource is an Output, also for optional inputs left unset", async () => {
    const made = [
        new vfio.IommuBinding("o1", { device: "01:00.0" }),
        new vfio.KvmfrDevice("o2", { index: 0, width: 1920, height: 1080 }),
        new vfio.VirtualFunctions("o3", { physicalFunction: "03:00.0", count: 2 }),
        new vfio.MdevInstance("o4", { parent: "mtty", type: "mtty-1" }),
    ] as any[];
    const outputs: Record<string, string[]> = {
        o1: ["driver", "wholeGroup", "allowBootVga", "persistent"],
        o2: ["sizeMb", "owner", "group", "mode"],
        o3: ["autoprobe"],
        o4: ["attrs", "persistent"],
    };
    made.forEach((r, i) => outputs[`o${i + 1}`].forEach((k) => expect(pulumi.Output.isInstance(r[k])).toBe(true)));
    // Let registration (which serializes each provider) finish before the test ends.
    await Promise.all(made.map((r) => value(r.urn)));
});
