/**
 * The reset contract: what `reset_method` and `reset` answer (drivers/pci/pci-sysfs.c `reset_method_store`,
 * drivers/pci/pci.c `pci_reset_function`, Documentation/ABI/testing/sysfs-bus-pci). The same tests run against the
 * fake kernel (reset.fake.test.ts) and the lab's real kernel (reset.lab.test.ts); when they disagree, the fake is wrong.
 */
import { Host, Op, OpResult } from "../../provider/host/types";
import { resetLabDevices } from "./pci.contract";

const GPU = "0000:01:00.0";
const EDU = "0000:02:00.0";
const NVME = "0000:03:00.0";
const DEV = "/sys/bus/pci/devices";

export interface ContractTarget {
    host: Host;
}

const w = (path: string, data: string): Op => ({ op: "write", path, data });
const one = async (host: Host, op: Op): Promise<OpResult> => (await host.run([op]))[0];
const methods = async (host: Host, bdf: string) => (await one(host, { op: "read", path: `${DEV}/${bdf}/reset_method` })).data.trim();

export function resetContract(describeFn: jest.Describe, target: () => ContractTarget): void {
    describeFn("reset_method / reset kernel contract", () => {
        let host: Host;
        beforeAll(() => {
            host = target().host;
        });
        afterEach(async () => {
            await host.run([w(`${DEV}/${EDU}/reset_method`, "default"), w(`${DEV}/${NVME}/reset_method`, "default")]);
            await resetLabDevices(host);
        });

        test("the lab's devices list the methods the kernel found: edu and the GPU `bus`, the NVMe `flr bus`", async () => {
            expect([await methods(host, GPU), await methods(host, EDU), await methods(host, NVME)]).toEqual(["bus", "bus", "flr bus"]);
        });

        test("a subset of the supported methods is taken in the order written; `default` restores the kernel's list", async () => {
            expect((await one(host, w(`${DEV}/${NVME}/reset_method`, "bus flr"))).ok).toBe(true);
            expect(await methods(host, NVME)).toBe("bus flr");
            expect((await one(host, w(`${DEV}/${NVME}/reset_method`, "flr"))).ok).toBe(true);
            expect(await methods(host, NVME)).toBe("flr");
            expect((await one(host, w(`${DEV}/${NVME}/reset_method`, "default"))).ok).toBe(true);
            expect(await methods(host, NVME)).toBe("flr bus");
        });

        test("a method the device does not support is EINVAL and changes nothing; so is a bus reset the GPU's audio function now prevents", async () => {
            const flr = await one(host, w(`${DEV}/${EDU}/reset_method`, "flr"));
            expect([flr.ok, flr.errno]).toEqual([false, "EINVAL"]);
            expect(await methods(host, EDU)).toBe("bus");
            const bogus = await one(host, w(`${DEV}/${EDU}/reset_method`, "reboot"));
            expect([bogus.ok, bogus.errno]).toEqual([false, "EINVAL"]);
            const bus = await one(host, w(`${DEV}/${GPU}/reset_method`, "bus"));
            expect([bus.ok, bus.errno]).toEqual([false, "EINVAL"]);
            expect(await methods(host, GPU)).toBe("bus");
        });

        test("an empty reset_method disables every method: the file reads empty, stays, and `reset` is ENOTTY", async () => {
            expect((await one(host, w(`${DEV}/${EDU}/reset_method`, "\n"))).ok).toBe(true);
            expect(await methods(host, EDU)).toBe("");
            const r = await one(host, w(`${DEV}/${EDU}/reset`, "1"));
            expect([r.ok, r.errno]).toEqual([false, "ENOTTY"]);
            expect((await one(host, w(`${DEV}/${EDU}/reset_method`, "default"))).ok).toBe(true);
            expect((await one(host, w(`${DEV}/${EDU}/reset`, "1"))).ok).toBe(true);
        });

        test("the NVMe resets by FLR while unbound, and its driver binds again after it", async () => {
            const drv = "/sys/bus/pci/drivers/nvme";
            expect((await one(host, w(`${drv}/unbind`, NVME))).ok).toBe(true);
            expect((await one(host, w(`${DEV}/${NVME}/reset_method`, "flr"))).ok).toBe(true);
            expect((await one(host, w(`${DEV}/${NVME}/reset`, "1"))).ok).toBe(true);
            expect((await one(host, w(`${drv}/bind`, NVME))).ok).toBe(true);
            const link = await one(host, { op: "readlink", path: `${DEV}/${NVME}/driver` });
            expect(link.data.trim().split("/").pop()).toBe("nvme");
        });
    });
}
