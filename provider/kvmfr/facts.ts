/** What KvmfrDevice reads of a host: kvmfr's files, module, device node, accounts and holders (and libvirt's files). */
import { LIBVIRT_OPS, LibvirtFacts, parseLibvirtFacts } from "../libvirt/qemuConf";
import { Host, Op, OpResult } from "../host/types";
import { KVMFR_CLASS, KVMFR_MAX_DEVICES, KvmfrNode, LOADED_SIZES, MODPROBE_CONF, MODULES_LOAD_CONF, UDEV_RULES, kvmfrPath, parseModprobeConf, parseStat } from "../sysfs/kvmfr";

export interface KvmfrFacts {
    installed: boolean;
    kernelRelease: string;
    loaded: boolean;
    /** static_size_mb in /etc/modprobe.d/kvmfr.conf. */
    confSizes: number[];
    confText?: string;
    udevText?: string;
    modulesLoadText?: string;
    /** What the loaded module was given: our record, else (loaded at boot) the conf, else unknown. */
    loadedSizes: number[] | null;
    /** /sys/class/kvmfr entries: how many devices the loaded module made. */
    classCount: number;
    node: KvmfrNode;
    uid: number | null;
    gid: number | null;
    /** /dev/kvmfrI → PIDs holding it, for every device that exists or is configured. */
    openers: Map<number, number[]>;
    comms: Map<number, string>;
    /** Read only when libvirt is involved. */
    libvirt?: LibvirtFacts;
}

const lines = (r: OpResult | undefined) => (r?.ok ? r.data.split("\n").filter(Boolean) : []);

function idFromGetent(r: OpResult | undefined): number | null {
    if (!r?.ok) return null;
    const f = r.data.split(":");
    return f.length >= 3 && /^\d+$/.test(f[2]) ? Number(f[2]) : null;
}

/** Two round trips: files, module, node and accounts (and libvirt's files); then who holds which /dev/kvmfr*. */
export async function readKvmfrFacts(host: Host, index: number, owner: string, group: string, libvirt = false): Promise<KvmfrFacts> {
    const ops: Op[] = [
        { op: "exec", argv: ["modprobe", "-n", "-q", "kvmfr"], optional: true },
        { op: "exec", argv: ["uname", "-r"], optional: true },
        { op: "read", path: MODPROBE_CONF },
        { op: "read", path: UDEV_RULES },
        { op: "read", path: MODULES_LOAD_CONF },
        { op: "stat", path: "/sys/module/kvmfr" },
        { op: "read", path: LOADED_SIZES },
        { op: "list", path: KVMFR_CLASS },
        { op: "stat", path: kvmfrPath(index) },
        { op: "exec", argv: ["getent", "passwd", owner], optional: true },
        { op: "exec", argv: ["getent", "group", group], optional: true },
        ...(libvirt ? LIBVIRT_OPS : []),
    ];
    const r = await host.run(ops);
    const loaded = r[5].ok;
    const confSizes = parseModprobeConf(r[2].ok ? r[2].data : undefined);
    const classCount = lines(r[7]).filter((n) => /^kvmfr\d$/.test(n)).length;
    const recorded = r[6].ok ? parseModprobeConf(`options kvmfr static_size_mb=${r[6].data.trim()}`) : null;
    let loadedSizes: number[] | null = null;
    if (loaded) loadedSizes = recorded && recorded.length === classCount ? recorded : confSizes.length === classCount ? confSizes : null;
    const count = Math.min(KVMFR_MAX_DEVICES, Math.max(confSizes.length, classCount, index + 1));
    const r2 = await host.run(Array.from({ length: count }, (_, i): Op => ({ op: "openers", path: kvmfrPath(i) })));
    const openers = new Map<number, number[]>();
    r2.forEach((x, i) => openers.set(i, lines(x).map(Number)));
    return {
        installed: r[0].ok || loaded,
        kernelRelease: r[1].ok ? r[1].data.trim() : "",
        loaded,
        confSizes,
        confText: r[2].ok ? r[2].data : undefined,
        udevText: r[3].ok ? r[3].data : undefined,
        modulesLoadText: r[4].ok ? r[4].data : undefined,
        loadedSizes,
        classCount,
        node: parseStat(r[8].ok, r[8].data),
        uid: idFromGetent(r[9]),
        gid: idFromGetent(r[10]),
        openers,
        comms: new Map(),
        libvirt: libvirt ? parseLibvirtFacts(r.slice(11)) : undefined,
    };
}
