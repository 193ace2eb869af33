/**
 * schema/ is the one source of input shapes, docs and defaults: the generated files must be current (CI runs the
 * same check), the check must catch a stale copy, and the resources' defaults must be the schema's.
 */
import { spawnSync } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { schemaDefault, schemas } from "../../provider/check";
import { normalize } from "../../provider/passthroughVm";
import { diff as vfDiff, VirtualFunctionsOutputs } from "../../provider/virtualFunctions";
import { diff as bootDiff, BootConfigOutputs } from "../../provider/bootConfig";

const ROOT = path.resolve(__dirname, "../..");
const gen = (...args: string[]) => spawnSync(process.execPath, [path.join(ROOT, "scripts/gen-schema.js"), ...args], { encoding: "utf8" });

describe("generated from schema/", () => {
    test("provider/generated, sdk/generated and the README's input tables are current", () => {
        const r = gen("--check");
        expect(r.stdout + r.stderr).toBe("");
        expect(r.status).toBe(0);
    });

    test("a schema changed without regenerating fails the check with a diff; regenerating fixes it", () => {
        const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "gen-schema-test-"));
        try {
            for (const p of ["schema", "provider/generated", "sdk/generated", "README.md"]) fs.cpSync(path.join(ROOT, p), path.join(tmp, p), { recursive: true });
            const file = path.join(tmp, "schema/virtual-functions.schema.json");
            const s = JSON.parse(fs.readFileSync(file, "utf8"));
            s.properties.autoprobe.description = "Changed in the schema only.";
            s.properties.autoprobe.default = true;
            fs.writeFileSync(file, JSON.stringify(s, null, 2));

            const stale = gen("--check", "--root", tmp);
            expect(stale.status).toBe(1);
            expect(stale.stderr).toContain("3 generated file(s) are stale");
            for (const f of ["provider/generated/inputs.ts", "sdk/generated/args.ts", "README.md"]) expect(stale.stdout).toContain(`+++ ${f} (from schema/)`);
            expect(stale.stdout).toContain("+    /** Changed in the schema only. Default: `true`. */");
            expect(stale.stdout).toContain("+| `autoprobe` | boolean | `true` | Changed in the schema only. |");

            expect(gen("--root", tmp).status).toBe(0);
            expect(gen("--check", "--root", tmp).status).toBe(0);
        } finally {
            fs.rmSync(tmp, { recursive: true, force: true });
        }
    });
});

describe("defaults come from the schema", () => {
    /** Sets a default in the schema ajv validates with, for the duration of `fn`. */
    function withDefault(file: string, at: (s: any) => any, value: unknown, fn: () => void) {
        const node = at(schemas().getSchema(file)!.schema);
        const was = node.default;
        node.default = value;
        try {
            fn();
        } finally {
            node.default = was;
        }
    }

    test("a PassthroughVm's memory, cores and disk bus follow the schema's defaults", () => {
        expect(normalize({ name: "vm", disks: ["/img/a.raw"] })).toMatchObject({ memoryMb: 4096, cpu: { cores: 2 }, disks: [{ bus: "virtio" }] });
        withDefault("passthrough-vm.schema.json", (s) => s.properties.memoryMb, 8192, () =>
            withDefault("passthrough-vm.schema.json", (s) => s.properties.cpu.properties.cores, 4, () =>
                withDefault("passthrough-vm.schema.json", (s) => s.$defs.disk.oneOf[1].properties.bus, "nvme", () => {
                    expect(normalize({ name: "vm", disks: ["/img/a.raw"] })).toMatchObject({ memoryMb: 8192, cpu: { cores: 4 }, disks: [{ bus: "nvme" }] });
                }),
            ),
        );
    });

    test("VirtualFunctions' diff compares an absent autoprobe with the schema's default", () => {
        const olds = { physicalFunction: "0000:03:00.0", count: 2, autoprobe: true, addresses: ["0000:03:00.1", "0000:03:00.2"] } as VirtualFunctionsOutputs;
        const news = { physicalFunction: "0000:03:00.0", count: 2 };
        expect(vfDiff("0000:03:00.0", olds, news).changes).toBe(true);
        withDefault("virtual-functions.schema.json", (s) => s.properties.autoprobe, true, () => {
            expect(vfDiff("0000:03:00.0", olds, news).changes).toBe(false);
        });
    });

    test("BootConfig's diff compares absent inputs with the schema's defaults (reboot, rebootTimeout, bootloader)", () => {
        const olds = { kernelParameters: ["intel_iommu=on"], removeKernelParameters: [], earlyBinding: [], modules: [], bootloader: "auto", reboot: "never", rebootTimeout: 600, written: {}, found: {} } as unknown as BootConfigOutputs;
        const news = { kernelParameters: ["intel_iommu=on"] };
        expect(bootDiff("boot", olds, news).changes).toBe(false);
        withDefault("boot-config.schema.json", (s) => s.properties.rebootTimeout, 900, () => {
            expect(bootDiff("boot", olds, news).changes).toBe(true);
        });
        withDefault("boot-config.schema.json", (s) => s.properties.bootloader, "grub", () => {
            expect(bootDiff("boot", olds, news).changes).toBe(true);
        });
    });

    test("a mistyped default path is an error, not undefined", () => {
        expect(() => schemaDefault("iommu-binding.schema.json", "drivr")).toThrow("iommu-binding.schema.json gives no default at drivr");
        expect(schemaDefault("iommu-binding.schema.json", "driver")).toBe("vfio-pci");
    });

    test("a default list is a copy: changing it does not change the schema", () => {
        const attrs = schemaDefault<unknown[]>("mdev-instance.schema.json", "attrs");
        attrs.push({ name: "x", value: "y" });
        expect(schemaDefault("mdev-instance.schema.json", "attrs")).toEqual([]);
    });
});
