/**
 * The SDK face of MdevInstance and VirtualFunctions under `pulumi.runtime.setMocks`: type tokens, the thin
 * serialized provider, the UUID derived from project, stack and resource name, the secret connection.
 */
import * as pulumi from "@pulumi/pulumi";
import { defaultMdevUuid } from "../../provider/sysfs/mdev";

const created: pulumi.runtime.MockResourceArgs[] = [];
pulumi.runtime.setMocks(
    {
        newResource(args) {
            created.push(args);
            return { id: `${args.name}-id`, state: { ...args.inputs } };
        },
        call(args) {
            return args.inputs;
        },
    },
    "lab-project",
    "dev",
    false,
);

// eslint-disable-next-line @typescript-eslint/no-var-requires
const vfio: typeof import("../../sdk") = require("../../sdk");
const value = <T>(o: pulumi.Output<T>): Promise<T> => new Promise((r) => o.apply((v) => r(v)));

test("an MdevInstance without a uuid gets the v5 UUID of project, stack and resource name, the same every run", async () => {
    const m = new vfio.MdevInstance("win-vgpu", { parent: "mtty", type: "mtty-2" });
    const expected = defaultMdevUuid("lab-project", "dev", "win-vgpu");
    expect(await value(m.uuid)).toBe(expected);
    const r = created.find((c) => c.name === "win-vgpu")!;
    expect(r.type).toBe("pulumi-nodejs:dynamic/vfio:MdevInstance");
    expect(r.inputs.uuid).toBe(expected);
    expect(String(r.inputs.__provider)).toContain('require("pulumi-vfio/provider")');
    expect(String(r.inputs.__provider)).toContain('"mdevInstance"');
});

test("a given uuid is passed as is; two resources never share a derived one", async () => {
    const a = new vfio.MdevInstance("a", { parent: "mtty", type: "mtty-1", uuid: "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001" });
    const b = new vfio.MdevInstance("b", { parent: "mtty", type: "mtty-1" });
    expect(await value(a.uuid)).toBe("83b8f4f2-509f-382f-3c1e-e6bfe0fa1001");
    expect(await value(b.uuid)).not.toBe(defaultMdevUuid("lab-project", "dev", "win-vgpu"));
});

test("VirtualFunctions registers with its type token, and the connection is a secret", async () => {
    const v = new vfio.VirtualFunctions("nvme-vfs", { physicalFunction: "03:00.0", count: 2, connection: { host: "lab", privateKey: "KEY" } });
    expect(await value(v.physicalFunction)).toBe("03:00.0");
    const r = created.find((c) => c.name === "nvme-vfs")!;
    expect(r.type).toBe("pulumi-nodejs:dynamic/vfio:VirtualFunctions");
    expect(r.inputs.connection[pulumi.runtime.specialSigKey]).toBe(pulumi.runtime.specialSecretSig);
    expect(String(r.inputs.__provider)).not.toContain("KEY");
});
