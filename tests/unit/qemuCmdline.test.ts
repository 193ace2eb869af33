/**
 * The QEMU command line, golden: the expected argv is written out by hand from the lines the Looking Glass docs
 * (ivshmem_kvmfr.rst, "QEMU") and the ArchWiki ("PCI passthrough via OVMF": vfio-pci with multifunction, OVMF
 * pflash with a per-VM VARS copy, the NVIDIA Error 43 options) document, so a change in the builder shows up as a
 * diff against what users copy from those pages today.
 */
import { HYPERV_ENLIGHTENMENTS, HostDevice, VmSpec, buildCommandLine, guestSlots, layoutProblems, systemdQuote, systemdUnit, vmPaths } from "../../provider/qemu/cmdline";
import { kvmfrQemuArgs } from "../../provider/sysfs/kvmfr";

function spec(over: Partial<VmSpec> = {}): VmSpec {
    return {
        name: "win10",
        machine: "q35",
        accel: "kvm",
        cpu: { model: "host", sockets: 1, cores: 4, threads: 2 },
        memoryMb: 16384,
        hugepages: false,
        disks: [],
        network: { mode: "none", model: "virtio-net-pci" },
        hostDevices: [],
        mdevs: [],
        hideHypervisor: false,
        hvVendorId: "pulumi-vfio1",
        extraArgs: [],
        paths: vmPaths(over.name ?? "win10"),
        ...over,
    };
}

/** argv → the `-opt value` pairs, one per line, as the docs print them. */
const lines = (argv: string[]) => {
    const out: string[] = [argv[0]];
    for (let i = 1; i < argv.length; i++) {
        if (argv[i].startsWith("-") && argv[i + 1] !== undefined && !argv[i + 1].startsWith("-")) out.push(`${argv[i]} ${argv[++i]}`);
        else out.push(argv[i]);
    }
    return out;
};

test("a Looking Glass gaming VM: GPU + HDMI audio, kvmfr, OVMF, hugepages, NVIDIA workaround", () => {
    const argv = buildCommandLine(
        spec({
            hugepages: true,
            firmware: { code: "/usr/share/OVMF/OVMF_CODE_4M.fd", vars: "/var/lib/pulumi-vfio/vm/win10/OVMF_VARS.fd" },
            disks: [{ path: "/var/lib/libvirt/images/win10.qcow2", format: "qcow2", bus: "virtio", readOnly: false }],
            cdrom: "/srv/iso/Win10.iso",
            network: { mode: "user", model: "virtio-net-pci" },
            hostDevices: [
                { address: "0000:01:00.0", group: 14 },
                { address: "0000:01:00.1", group: 14 },
            ],
            sharedMemory: { path: "/dev/kvmfr0", sizeMb: 64 },
            hideHypervisor: true,
        }),
    );
    expect(lines(argv)).toEqual([
        "qemu-system-x86_64",
        "-name win10",
        "-machine q35,accel=kvm,kernel_irqchip=on,memory-backend=mem0",
        // Proxmox's set for an x-vga GPU (hv-vendor-id alone does nothing: QEMU's hyperv.rst), plus hv-frequencies.
        "-cpu host,kvm=off,hv-vendor-id=pulumi-vfio1,hv-spinlocks=0x1fff,hv-vapic,hv-time,hv-reset,hv-vpindex,hv-runtime,hv-relaxed,hv-synic,hv-stimer,hv-ipi,hv-frequencies",
        "-smp 8,sockets=1,cores=4,threads=2",
        "-m 16384M",
        "-object memory-backend-file,id=mem0,size=16384M,mem-path=/dev/hugepages,share=on,prealloc=on",
        "-nodefaults",
        "-display none",
        "-drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
        "-drive if=pflash,format=raw,file=/var/lib/pulumi-vfio/vm/win10/OVMF_VARS.fd",
        "-drive file=/var/lib/libvirt/images/win10.qcow2,if=none,id=disk0,format=qcow2",
        "-device virtio-blk-pci,drive=disk0,id=disk0-dev,bus=pcie.0,addr=0x4.0",
        "-drive file=/srv/iso/Win10.iso,if=none,id=cdrom0,media=cdrom,readonly=on",
        "-device ide-cd,drive=cdrom0,bus=ide.0,id=cdrom0-dev",
        "-netdev user,id=net0",
        "-device virtio-net-pci,netdev=net0,mac=52:54:00:4f:72:9c,id=nic0,bus=pcie.0,addr=0x2.0",
        "-device pcie-root-port,id=rp0,chassis=128,bus=pcie.0,addr=0x10.0",
        "-device vfio-pci,host=0000:01:00.0,multifunction=on,id=hostdev0,bus=rp0,addr=00.0",
        "-device vfio-pci,host=0000:01:00.1,id=hostdev1,bus=rp0,addr=00.1",
        "-object memory-backend-file,id=looking-glass,mem-path=/dev/kvmfr0,size=64M,share=yes",
        "-device ivshmem-plain,id=shmem0,memdev=looking-glass,bus=pcie.0,addr=0x3.0",
        "-serial file:/run/pulumi-vfio/vm/win10/serial.log",
        "-pidfile /run/pulumi-vfio/vm/win10/qemu.pid",
        "-qmp unix:/run/pulumi-vfio/vm/win10/qmp.sock,server=on,wait=off",
        "-daemonize",
    ]);
});

test("Looking Glass's IVSHMEM lines are the docs' own, for kvmfr and for a /dev/shm file", () => {
    expect(kvmfrQemuArgs(0, 32).join(" ")).toBe("-object memory-backend-file,id=looking-glass,mem-path=/dev/kvmfr0,size=32M,share=yes -device ivshmem-plain,id=shmem0,memdev=looking-glass");
    const argv = buildCommandLine(spec({ sharedMemory: { path: "/dev/shm/looking-glass", sizeMb: 32 } })).join(" ");
    expect(argv).toContain("-object memory-backend-file,id=looking-glass,mem-path=/dev/shm/looking-glass,size=32M,share=yes -device ivshmem-plain,id=shmem0,memdev=looking-glass,bus=pcie.0,addr=0x3.0");
});

test("the lab's nested VM: TCG, GPU pair, an mdev, a VF, /dev/shm buffer, no disk", () => {
    const argv = buildCommandLine(
        spec({
            name: "lab-vm",
            accel: "tcg",
            cpu: { model: "max", sockets: 1, cores: 1, threads: 1 },
            memoryMb: 256,
            hostDevices: [
                { address: "0000:01:00.0", group: 7 },
                { address: "0000:01:00.1", group: 7 },
                { address: "0000:03:00.1", group: 10 },
            ],
            mdevs: [{ uuid: "3b1f6a7e-8f1c-4d2a-9d3e-2a1b0c9d8e7f", type: "mtty-2" }],
            sharedMemory: { path: "/dev/shm/looking-glass", sizeMb: 32 },
        }),
    );
    expect(lines(argv)).toEqual([
        "qemu-system-x86_64",
        "-name lab-vm",
        "-machine q35,accel=tcg",
        "-cpu max",
        "-smp 1,sockets=1,cores=1,threads=1",
        "-m 256M",
        "-nodefaults",
        "-display none",
        // Two root ports share slot 0x10 (function 0 multifunction=on), as libvirt packs them; chassis = devfn.
        "-device pcie-root-port,id=rp0,chassis=128,bus=pcie.0,addr=0x10.0,multifunction=on",
        "-device vfio-pci,host=0000:01:00.0,multifunction=on,id=hostdev0,bus=rp0,addr=00.0",
        "-device vfio-pci,host=0000:01:00.1,id=hostdev1,bus=rp0,addr=00.1",
        "-device pcie-root-port,id=rp1,chassis=129,bus=pcie.0,addr=0x10.1",
        // A VF alone in its slot: it becomes function 0, or the guest would not look at it.
        "-device vfio-pci,host=0000:03:00.1,id=hostdev2,bus=rp1,addr=00.0",
        "-device pcie-root-port,id=rp-mdev0,chassis=192,bus=pcie.0,addr=0x18.0",
        "-device vfio-pci,sysfsdev=/sys/bus/mdev/devices/3b1f6a7e-8f1c-4d2a-9d3e-2a1b0c9d8e7f,id=mdev0,bus=rp-mdev0,addr=00.0",
        "-object memory-backend-file,id=looking-glass,mem-path=/dev/shm/looking-glass,size=32M,share=yes",
        "-device ivshmem-plain,id=shmem0,memdev=looking-glass,bus=pcie.0,addr=0x3.0",
        "-serial file:/run/pulumi-vfio/vm/lab-vm/serial.log",
        "-pidfile /run/pulumi-vfio/vm/lab-vm/qemu.pid",
        "-qmp unix:/run/pulumi-vfio/vm/lab-vm/qmp.sock,server=on,wait=off",
        "-daemonize",
    ]);
});

test("an NVIDIA vGPU mdev gives the VM its UUID (-uuid) and display=off as written", () => {
    const uuid = "a297db4a-f4c2-11e6-90f6-d3b88d6c9525";
    const argv = buildCommandLine(spec({ mdevs: [{ uuid, type: "nvidia-63", display: false }] }));
    expect(argv.slice(1, 5)).toEqual(["-name", "win10", "-uuid", uuid]);
    expect(argv).toContain(`vfio-pci,sysfsdev=/sys/bus/mdev/devices/${uuid},display=off,id=mdev0,bus=rp-mdev0,addr=00.0`);
    // Other mdev types do not touch the SMBIOS UUID.
    expect(buildCommandLine(spec({ mdevs: [{ uuid, type: "i915-GVTg_V5_4" }] }))).not.toContain("-uuid");
});

test("an NVIDIA vGPU 17+ (no mdev bus) is its VF, passed by address, with the VM's UUID set to the vGPU's", () => {
    const uuid = "a297db4a-f4c2-11e6-90f6-d3b88d6c9525";
    const argv = buildCommandLine(spec({ mdevs: [{ uuid, type: "nvidia-1132", address: "0000:41:00.4" }] }));
    expect(argv).toContain("vfio-pci,host=0000:41:00.4,id=mdev0,bus=rp-mdev0,addr=00.0");
    expect(argv.slice(3, 5)).toEqual(["-uuid", uuid]);
});

test("x-vga and romfile go on the function they were given for; commas in paths are doubled", () => {
    const argv = buildCommandLine(spec({ hostDevices: [{ address: "0000:0a:00.0", group: 3, xVga: true, romfile: "/srv/roms/gpu,patched.rom" }] }));
    expect(argv).toContain("vfio-pci,host=0000:0a:00.0,x-vga=on,romfile=/srv/roms/gpu,,patched.rom,id=hostdev0,bus=rp0,addr=00.0");
});

test("SATA disks and NVMe disks, read-only, extra args appended last as argv words", () => {
    const argv = buildCommandLine(
        spec({
            disks: [
                { path: "/srv/a.img", format: "raw", bus: "sata", readOnly: true },
                { path: "/srv/b.img", format: "raw", bus: "nvme", readOnly: false },
            ],
            extraArgs: ["-device", "qemu-xhci,id=usb", "-rtc", "base=localtime"],
        }),
    );
    expect(lines(argv)).toEqual(
        expect.arrayContaining([
            "-drive file=/srv/a.img,if=none,id=disk0,format=raw,readonly=on",
            "-device ide-hd,drive=disk0,bus=ide.0,id=disk0-dev",
            "-drive file=/srv/b.img,if=none,id=disk1,format=raw",
            // The first PCI disk: a SATA disk before it takes no PCI address.
            "-device nvme,drive=disk1,serial=win10-1,id=disk1-dev,bus=pcie.0,addr=0x4.0",
        ]),
    );
    expect(argv.slice(-4)).toEqual(["-device", "qemu-xhci,id=usb", "-rtc", "base=localtime"]);
});

describe.each<[string, HostDevice[], string[][]]>([
    ["GPU + audio in one group share a slot", [{ address: "0000:01:00.0", group: 1 }, { address: "0000:01:00.1", group: 1 }], [["0000:01:00.0@0", "0000:01:00.1@1"]]],
    ["two VFs of one PF (own groups) get a slot each, as function 0", [{ address: "0000:03:00.1", group: 10 }, { address: "0000:03:00.2", group: 11 }], [["0000:03:00.1@0"], ["0000:03:00.2@0"]]],
    ["a group spanning two slots (no ACS) gives two slots", [{ address: "0000:05:00.0", group: 2 }, { address: "0000:06:00.0", group: 2 }], [["0000:05:00.0@0"], ["0000:06:00.0@0"]]],
    ["functions 1 and 2 without 0 are renumbered from 0", [{ address: "0000:07:00.2", group: 4 }, { address: "0000:07:00.1", group: 4 }], [["0000:07:00.1@0", "0000:07:00.2@1"]]],
])("guest slots: %s", (_what, devices, want) => {
    test("placement", () => {
        expect(guestSlots(devices).map((s) => s.functions.map((f) => `${f.device.address}@${f.guestFunction}`))).toEqual(want);
    });
});

test("the autostart unit runs the same argv (systemd-quoted) with the pidfile QEMU writes", () => {
    const s = spec({ name: "gpu-vm" });
    const argv = buildCommandLine(s);
    const unit = systemdUnit(s, argv, 90);
    expect(unit).toMatch(/^Type=forking$/m);
    expect(unit).toMatch(/^PIDFile=\/run\/pulumi-vfio\/vm\/gpu-vm\/qemu\.pid$/m);
    expect(unit).toMatch(/^ExecStart=qemu-system-x86_64 -name gpu-vm -machine q35,accel=kvm /m);
    expect(unit).toMatch(/^TimeoutStopSec=90$/m);
    expect(systemdQuote("a b$c%d\"e")).toBe('"a b$$c%%d\\"e"');
});

test("a VM name that could walk out of the run dir is refused", () => {
    expect(() => vmPaths("../etc")).toThrow(/is not a VM name/);
    expect(() => vmPaths("a/b")).toThrow(/is not a VM name/);
    expect(vmPaths("win10.gaming").runDir).toBe("/run/pulumi-vfio/vm/win10.gaming");
});

describe("NVIDIA Error 43 (hideHypervisor)", () => {
    const cpuOf = (over: Partial<VmSpec>) => {
        const argv = buildCommandLine(spec(over));
        return argv[argv.indexOf("-cpu") + 1];
    };

    test("on KVM: kvm=off, the vendor id and the enlightenments that make QEMU present a Hyper-V identity", () => {
        const cpu = cpuOf({ hideHypervisor: true, hvVendorId: "0123456789ab" }).split(",");
        expect(cpu.slice(0, 3)).toEqual(["host", "kvm=off", "hv-vendor-id=0123456789ab"]);
        // hyperv.rst: hv-vendor-id "doesn't enable Hyper-V identification when specified without some other
        // enlightenment"; Proxmox's set, every dependency ("Requires") included.
        for (const f of ["hv-relaxed", "hv-vapic", "hv-spinlocks=0x1fff", "hv-time", "hv-vpindex", "hv-runtime", "hv-synic", "hv-stimer", "hv-reset", "hv-ipi", "hv-frequencies"]) expect(cpu).toContain(f);
        expect(cpu.slice(3)).toEqual([...HYPERV_ENLIGHTENMENTS]);
        expect(buildCommandLine(spec({ hideHypervisor: true }))).toContain("q35,accel=kvm,kernel_irqchip=on");
    });

    test("off: no Hyper-V flags at all; on TCG (no Hyper-V emulation): kvm=off only", () => {
        expect(cpuOf({})).toBe("host");
        expect(cpuOf({ accel: "tcg", cpu: { model: "max", sockets: 1, cores: 1, threads: 1 }, hideHypervisor: true })).toBe("max,kvm=off");
    });
});

describe("stable guest PCI addresses", () => {
    const gpu: HostDevice[] = [
        { address: "0000:01:00.0", group: 14, xVga: true },
        { address: "0000:01:00.1", group: 14 },
    ];
    /** The -device values that put the GPU in the guest: its root port and its functions. */
    const gpuPlacement = (argv: string[]) => argv.filter((a) => /^pcie-root-port,id=rp0,|^vfio-pci,host=0000:01:00\./.test(a));
    const base = buildCommandLine(spec({ hostDevices: gpu }));

    test("the GPU's root port is at a fixed slot with a fixed chassis", () => {
        expect(gpuPlacement(base)).toEqual([
            "pcie-root-port,id=rp0,chassis=128,bus=pcie.0,addr=0x10.0",
            "vfio-pci,host=0000:01:00.0,multifunction=on,x-vga=on,id=hostdev0,bus=rp0,addr=00.0",
            "vfio-pci,host=0000:01:00.1,id=hostdev1,bus=rp0,addr=00.1",
        ]);
    });

    test.each<[string, Partial<VmSpec>]>([
        ["a virtio disk", { disks: [{ path: "/srv/a.qcow2", format: "qcow2", bus: "virtio", readOnly: false }] }],
        ["three NVMe and virtio disks", { disks: ["virtio", "nvme", "virtio"].map((bus, i) => ({ path: `/srv/${i}.img`, format: "raw" as const, bus: bus as "virtio" | "nvme", readOnly: false })) }],
        ["an mdev", { mdevs: [{ uuid: "3b1f6a7e-8f1c-4d2a-9d3e-2a1b0c9d8e7f", type: "mtty-2" }] }],
        ["a NIC", { network: { mode: "user", model: "virtio-net-pci" } }],
        ["Looking Glass shared memory", { sharedMemory: { path: "/dev/shm/looking-glass", sizeMb: 32 } }],
        ["a second passed-through device after the GPU", { hostDevices: [...gpu, { address: "0000:03:00.1", group: 10 }] }],
    ])("adding %s does not move the GPU", (_what, over) => {
        const argv = buildCommandLine(spec({ hostDevices: gpu, ...over }));
        // Function 0 of slot 0x10 gains multifunction=on when a second port joins it; the addresses stay.
        const port = (d: string) => (d.startsWith("pcie-root-port") ? d.replace(",multifunction=on", "") : d);
        expect(gpuPlacement(argv).map(port)).toEqual(gpuPlacement(base));
    });

    test("every device on pcie.0 has an explicit address, and no two share one", () => {
        const argv = buildCommandLine(
            spec({
                hostDevices: [...gpu, ...Array.from({ length: 9 }, (_, i) => ({ address: `0000:${(0x10 + i).toString(16)}:00.0`, group: 30 + i }))],
                mdevs: Array.from({ length: 3 }, (_, i) => ({ uuid: `3b1f6a7e-8f1c-4d2a-9d3e-2a1b0c9d8e7${i}` })),
                disks: Array.from({ length: 10 }, (_, i) => ({ path: `/srv/${i}.img`, format: "raw" as const, bus: "virtio" as const, readOnly: false })),
                network: { mode: "user", model: "virtio-net-pci" },
                sharedMemory: { path: "/dev/shm/lg", sizeMb: 32 },
            }),
        );
        const onRoot = argv.filter((a, i) => argv[i - 1] === "-device" && !/^ide-|bus=(rp|ide)/.test(a));
        expect(onRoot.length).toBe(10 + 3 + 10 + 2);
        const addrs = onRoot.map((d) => /,bus=pcie\.0,addr=(0x[0-9a-f]+\.\d)/.exec(d)?.[1]);
        expect(addrs).not.toContain(undefined);
        expect(new Set(addrs).size).toBe(addrs.length);
        // Ten ports fill slot 0x10 and spill into 0x11; function 0 of a slot holding more says multifunction=on.
        expect(argv).toContain("pcie-root-port,id=rp8,chassis=136,bus=pcie.0,addr=0x11.0,multifunction=on");
        expect(argv).toContain("pcie-root-port,id=rp9,chassis=137,bus=pcie.0,addr=0x11.1");
        expect(argv).toContain("pcie-root-port,id=rp0,chassis=128,bus=pcie.0,addr=0x10.0,multifunction=on");
        expect(argv).toContain("virtio-blk-pci,drive=disk8,id=disk8-dev,bus=pcie.0,addr=0x5.0,multifunction=on");
    });

    test("more devices than the layout holds are refused by field", () => {
        const many = Array.from({ length: 33 }, (_, i) => ({ uuid: `00000000-0000-4000-8000-${String(i).padStart(12, "0")}` }));
        expect(layoutProblems(spec({ mdevs: many }))).toEqual([{ property: "mdevs", reason: "33 mdevs: at most 32 fit" }]);
        expect(layoutProblems(spec({ mdevs: many.slice(0, 32) }))).toEqual([]);
    });
});
