/**
 * The mdev and SR-IOV kernel ABI helpers: UUIDs (v5 derivation), parsing types' video memory the way LibVF.IO
 * does, NVIDIA vGPU 17+ type lists, mdevctl's file format and boot hook, VF addresses.
 */
import { OpResult } from "../../provider/host/types";
import {
    MdevType,
    defaultMdevUuid,
    mdevctlConfig,
    bootHookOps,
    parseBootHook,
    parseCreatableVgpuTypes,
    parseMdevctlConfig,
    parseParent,
    parseUuid,
    typesByVram,
    uuidV5,
    vramOf,
} from "../../provider/sysfs/mdev";
import { numVfsOps, vfAddress } from "../../provider/sysfs/sriov";
import { DEBIAN_MDEVCTL_RULE } from "../fake/mdev";

describe("UUIDs", () => {
    test("uuidV5 follows RFC 4122 (the DNS namespace example every implementation checks)", () => {
        expect(uuidV5("www.example.com", "6ba7b810-9dad-11d1-80b4-00c04fd430c8")).toBe("2ed6657d-e927-568b-95e1-2665a8aea6a2");
        expect(uuidV5("python.org", "6ba7b810-9dad-11d1-80b4-00c04fd430c8")).toBe("886313e1-3b8a-5372-9b90-0c9aee199e5d");
    });

    test("the default UUID depends on project, stack and resource name only, and is a v5 UUID", () => {
        const a = defaultMdevUuid("lab", "dev", "vgpu");
        expect(a).toBe(defaultMdevUuid("lab", "dev", "vgpu"));
        expect(a).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
        expect(new Set([a, defaultMdevUuid("lab", "prod", "vgpu"), defaultMdevUuid("lab", "dev", "vgpu2"), defaultMdevUuid("other", "dev", "vgpu")]).size).toBe(4);
    });

    test.each([
        ["83B8F4F2-509F-382F-3C1E-E6BFE0FA1001", "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"],
        ["83b8f4f2-509f-382f-3c1e-e6bfe0fa1001", "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"],
    ])("parseUuid(%s) is the lower-case form the kernel names the device with", (input, out) => {
        expect(parseUuid(input)).toBe(out);
    });

    test.each(["not-a-uuid", "83b8f4f2509f382f3c1ee6bfe0fa1001", "83b8f4f2-509f-382f-3c1e-e6bfe0fa100", "../../../etc/passwd", " 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"])(
        "parseUuid refuses %j with the expected form",
        (input) => {
            expect(() => parseUuid(input)).toThrow(/is not a UUID: write it as 8-4-4-4-12 hex digits/);
        },
    );
});

test.each([
    ["0000:00:02.0", { name: "0000:00:02.0", pci: true }],
    ["00:02.0", { name: "0000:00:02.0", pci: true }],
    ["mtty", { name: "mtty", pci: false }],
])("parseParent(%s)", (input, out) => {
    expect(parseParent(input)).toEqual(out);
});

test.each(["", "../mtty", "mtty/..", "a b"])("parseParent refuses %j", (input) => {
    expect(() => parseParent(input)).toThrow(/is not an mdev parent/);
});

describe("video memory of a type, as LibVF.IO reads it", () => {
    test.each([
        ["nvidia mdev description", { name: "GRID P40-2Q", description: "num_heads=4, frl_config=60, framebuffer=2048M, max_resolution=7680x4320, max_instance=12" }, 2048],
        ["Intel GVT-g description", { name: "GVTg_V5_4", description: "low_gm_size: 128MB\nhigh_gm_size: 512MB\nfence: 4\nresolution: 1920x1200\nweight: 4" }, 512],
        ["the kernel's mbochs sample", { name: "mbochs-medium", description: "virtual display, 16 MB video memory" }, 16],
        ["an NVIDIA vGPU 17+ profile name", { name: "NVIDIA L40S-24Q", description: "" }, 24576],
        ["a MIG-backed profile name", { name: "NVIDIA H200X-1-18C", description: "" }, 18432],
        ["mtty (no memory at all)", { name: "Dual port serial", description: "" }, null],
    ])("%s", (_what, t, mib) => {
        expect(vramOf(t)).toBe(mib);
    });

    const t = (id: string, vramMiB: number | null, available = 1): MdevType => ({ id, name: id, description: "", deviceApi: "vfio-pci", available, vramMiB });
    test("bounds choose in a stable order: smallest video memory first, then type id", () => {
        const types = [t("b-large", 64), t("b-small", 4), t("a-medium", 16), t("z-medium", 16), t("tty", null)];
        expect(typesByVram(types, { min: 10 }).map((x) => x.id)).toEqual(["a-medium", "z-medium", "b-large"]);
        expect(typesByVram(types, { max: 16 }).map((x) => x.id)).toEqual(["b-small", "a-medium", "z-medium"]);
        expect(typesByVram(types, { min: 17, max: 63 })).toEqual([]);
    });
});

test("creatable_vgpu_types: header skipped, id and name per line", () => {
    expect(parseCreatableVgpuTypes("ID    : vGPU Name\n1428 : NVIDIA H200X-141C\n1414 : NVIDIA H200X-1-18C\n")).toEqual([
        { id: "1428", name: "NVIDIA H200X-141C" },
        { id: "1414", name: "NVIDIA H200X-1-18C" },
    ]);
    expect(parseCreatableVgpuTypes("")).toEqual([]);
});

test("mdevctl's config: the same JSON mdevctl define writes, and back", () => {
    expect(mdevctlConfig("mtty-1", [])).toBe('{\n  "mdev_type": "mtty-1",\n  "start": "auto",\n  "attrs": []\n}');
    const text = mdevctlConfig("nvidia-63", [{ name: "nvidia/vgpu_params", value: "frame_rate_limiter=0" }]);
    expect(JSON.parse(text).attrs).toEqual([{ "nvidia/vgpu_params": "frame_rate_limiter=0" }]);
    expect(parseMdevctlConfig(text)).toEqual({ type: "nvidia-63", start: "auto", attrs: [{ name: "nvidia/vgpu_params", value: "frame_rate_limiter=0" }] });
    expect(parseMdevctlConfig("not json")).toBeNull();
});

describe("mdevctl's boot hook", () => {
    // Results of bootHookOps(): stat /usr/sbin/mdevctl, stat /usr/bin/mdevctl, then the rule in each udev directory.
    const results = (bins: [boolean, boolean], rules: (string | null)[]): OpResult[] => [
        ...bins.map((ok) => ({ ok, data: ok ? "regular file 755 0 0 1 0:0" : "" })),
        ...rules.map((r) => (r === null ? { ok: false, data: "", errno: "ENOENT" } : { ok: true, data: r })),
    ];
    test("Debian 12: the rule runs /usr/sbin/mdevctl, the binary is /usr/bin/mdevctl → an override in /etc fixes it", () => {
        const h = parseBootHook(results([false, true], [null, null, null, DEBIAN_MDEVCTL_RULE]));
        expect(h).toMatchObject({ mdevctl: "/usr/bin/mdevctl", rulePath: "/lib/udev/rules.d/60-mdevctl.rules", ruleCalls: "/usr/sbin/mdevctl", works: false });
        expect(h.fix!.path).toBe("/etc/udev/rules.d/60-mdevctl.rules");
        expect(h.fix!.text).not.toContain("/usr/sbin/mdevctl");
        expect(h.fix!.text.match(/\/usr\/bin\/mdevctl start-parent-mdevs/g)).toHaveLength(2);
    });
    test("once the override exists it is the rule in effect, and it works", () => {
        const fixed = DEBIAN_MDEVCTL_RULE.split("/usr/sbin/mdevctl").join("/usr/bin/mdevctl");
        expect(parseBootHook(results([false, true], [fixed, null, null, DEBIAN_MDEVCTL_RULE]))).toMatchObject({ works: true, fix: null, rulePath: "/etc/udev/rules.d/60-mdevctl.rules" });
    });
    test("upstream layout (binary in /usr/sbin) works as installed; no mdevctl at all has nothing to fix", () => {
        expect(parseBootHook(results([true, false], [null, null, DEBIAN_MDEVCTL_RULE, null]))).toMatchObject({ works: true, fix: null });
        expect(parseBootHook(results([false, false], [null, null, null, null]))).toMatchObject({ mdevctl: null, works: false, fix: null });
        expect(bootHookOps()).toHaveLength(6);
    });
});

describe("SR-IOV", () => {
    test.each([
        ["0000:03:00.0", 1, 1, 0, "0000:03:00.1"],
        ["0000:03:00.0", 1, 1, 3, "0000:03:00.4"],
        ["0000:41:00.0", 4, 1, 4, "0000:41:01.0"],
        ["0000:02:00.0", 128, 2, 1, "0000:02:10.2"],
        ["0000:01:1f.7", 1, 1, 0, "0000:02:00.0"],
    ])("VF address of %s offset %i stride %i index %i is %s", (pf, offset, stride, i, vf) => {
        expect(vfAddress(pf, offset, stride, i)).toBe(vf);
    });

    const st = (numVfs: number, autoprobe = true) => ({ totalVfs: 4, numVfs, autoprobe, offset: 1, stride: 1 });
    test.each([
        ["0 → 2, autoprobe off first", st(0), { count: 2, autoprobe: false }, ["sriov_drivers_autoprobe=0", "sriov_numvfs=2"]],
        ["2 → 3 goes through 0 (EBUSY otherwise)", st(2, false), { count: 3, autoprobe: false }, ["sriov_numvfs=0", "sriov_numvfs=3"]],
        ["2 → 0", st(2, false), { count: 0, autoprobe: false }, ["sriov_numvfs=0"]],
        ["same count and autoprobe: nothing", st(2, false), { count: 2, autoprobe: false }, []],
    ])("%s", (_what, from, to, writes) => {
        expect(numVfsOps("0000:03:00.0", from, to).map((o) => (o.op === "write" ? `${o.path.split("/").pop()}=${o.data}` : o.op))).toEqual(writes);
    });
});
