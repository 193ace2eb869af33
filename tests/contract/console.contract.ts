/**
 * The console contract: what the vtconsoles, fbcon, the platform framebuffer drivers and systemd answer when a
 * console GPU changes hands (drivers/tty/vt/vt.c `store_bind`, drivers/video/fbdev/core/fbcon.c, drivers/base/bus.c
 * bind/unbind, systemctl(1), systemd-run(1)). The same tests run against the fake kernel (console.fake.test.ts) and
 * the lab's real 6.1 kernel with bochs-drm's fbcon on the console GPU 00:01.0 (console.lab.test.ts); when they
 * disagree, the fake is wrong.
 */
import { Host, Op, OpResult } from "../../provider/host/types";

const CONSOLE_GPU = "0000:00:01.0";
const VT = "/sys/class/vtconsole";
const PCI = "/sys/bus/pci";
const UNIT = "pulumi-vfio-contract-dm.service";

export interface ContractTarget {
    host: Host;
    /** Make `unit` a loaded, inactive systemd unit (a long-running stand-in service). */
    addUnit(unit: string): Promise<void>;
    /** Remove it again. */
    dropUnit(unit: string): Promise<void>;
}

const w = (path: string, data: string): Op => ({ op: "write", path, data });
const one = async (host: Host, op: Op): Promise<OpResult> => (await host.run([op]))[0];
const text = async (host: Host, path: string) => (await one(host, { op: "read", path })).data.trim();
const bound = async (host: Host) => [await text(host, `${VT}/vtcon0/bind`), await text(host, `${VT}/vtcon1/bind`)];
const driverOf = async (host: Host, bdf: string) => ((await one(host, { op: "readlink", path: `${PCI}/devices/${bdf}/driver` })).data.trim().split("/").pop() ?? "") || null;

export function consoleContract(describeFn: jest.Describe, target: () => ContractTarget): void {
    describeFn("vtconsole / fbcon / platform framebuffer / systemd contract", () => {
        let host: Host;
        beforeAll(() => {
            host = target().host;
        });
        afterEach(async () => {
            // The console GPU back on bochs-drm with fbcon bound: only a framebuffer registering rebinds fbcon.
            if ((await text(host, `${VT}/vtcon0/bind`)) !== "1" && (await driverOf(host, CONSOLE_GPU)) === "bochs-drm") await host.run([w(`${PCI}/drivers/bochs-drm/unbind`, CONSOLE_GPU)]);
            if ((await driverOf(host, CONSOLE_GPU)) !== "bochs-drm") await host.run([w(`${PCI}/drivers/bochs-drm/bind`, CONSOLE_GPU)]);
        });

        test("vtcon0 is fbcon, bound; vtcon1 the dummy console, not", async () => {
            expect([await text(host, `${VT}/vtcon0/name`), await text(host, `${VT}/vtcon1/name`)]).toEqual(["(M) frame buffer device", "(M) dummy device"]);
            expect(await bound(host)).toEqual(["1", "0"]);
        });

        test("0 to fbcon's bind hands the consoles to the dummy console; 1 is taken but does not bring fbcon back", async () => {
            expect((await one(host, w(`${VT}/vtcon0/bind`, "0"))).ok).toBe(true);
            expect(await bound(host)).toEqual(["0", "1"]);
            expect((await one(host, w(`${VT}/vtcon0/bind`, "1"))).ok).toBe(true);
            expect(await bound(host)).toEqual(["0", "1"]);
        });

        test("the GPU's DRM driver going takes fbcon with it; 1 then changes nothing; the driver's return brings fbcon back by itself", async () => {
            expect((await one(host, w(`${PCI}/drivers/bochs-drm/unbind`, CONSOLE_GPU))).ok).toBe(true);
            expect(await bound(host)).toEqual(["0", "1"]);
            expect((await one(host, w(`${VT}/vtcon0/bind`, "1"))).ok).toBe(true);
            expect(await bound(host)).toEqual(["0", "1"]);
            expect((await one(host, w(`${PCI}/drivers/bochs-drm/bind`, CONSOLE_GPU))).ok).toBe(true);
            expect(await bound(host)).toEqual(["1", "0"]);
        });

        test("fbcon unbound first stays unbound through the unbind, and comes back with the driver", async () => {
            await host.run([w(`${VT}/vtcon0/bind`, "0")]);
            expect((await one(host, w(`${PCI}/drivers/bochs-drm/unbind`, CONSOLE_GPU))).ok).toBe(true);
            expect(await bound(host)).toEqual(["0", "1"]);
            expect((await one(host, w(`${PCI}/drivers/bochs-drm/bind`, CONSOLE_GPU))).ok).toBe(true);
            expect(await bound(host)).toEqual(["1", "0"]);
        });

        test("the platform framebuffer drivers are registered; unbinding a device they do not have is ENODEV", async () => {
            const drivers = (await one(host, { op: "list", path: "/sys/bus/platform/drivers" })).data.split("\n");
            expect(drivers).toEqual(expect.arrayContaining(["efi-framebuffer", "simple-framebuffer", "vesa-framebuffer"]));
            // The lab boots without firmware framebuffer (-kernel, SeaBIOS): no efi-framebuffer.0 to unbind.
            expect((await one(host, { op: "stat", path: "/sys/bus/platform/devices/efi-framebuffer.0" })).ok).toBe(false);
            const r = await one(host, w("/sys/bus/platform/drivers/efi-framebuffer/unbind", "efi-framebuffer.0"));
            expect([r.ok, r.errno]).toEqual([false, "ENODEV"]);
        });

        test("systemctl: is-active says inactive (3) for a stopped unit, active (0) once started; stop of a unit not loaded is 5", async () => {
            await target().addUnit(UNIT);
            try {
                const is = async () => {
                    const [r] = await host.run([{ op: "exec", argv: ["systemctl", "is-active", UNIT] }]);
                    return [r.data.trim(), r.code];
                };
                expect(await is()).toEqual(["inactive", 3]);
                expect((await one(host, { op: "exec", argv: ["systemctl", "start", UNIT] })).ok).toBe(true);
                expect(await is()).toEqual(["active", 0]);
                expect((await one(host, { op: "exec", argv: ["systemctl", "stop", UNIT] })).ok).toBe(true);
                expect(await is()).toEqual(["inactive", 3]);
                const gone = await one(host, { op: "exec", argv: ["systemctl", "stop", "pulumi-vfio-contract-none.timer"] });
                expect([gone.ok, gone.code]).toEqual([false, 5]);
            } finally {
                await target().dropUnit(UNIT);
            }
        });

        test("systemd-run arms a transient timer once: a second one of the same unit is refused until the timer is stopped", async () => {
            const unit = "pulumi-vfio-contract-timer";
            await host.run([{ op: "put", path: "/run/pulumi-vfio-contract.batch", data: "", mode: 0o600 }]);
            const arm = () => one(host, { op: "exec", argv: ["systemd-run", `--unit=${unit}`, "--on-active=3600s", "--property=StandardInput=file:/run/pulumi-vfio-contract.batch", "--collect", "/bin/true"] });
            try {
                expect((await arm()).ok).toBe(true);
                const again = await arm();
                expect([again.ok, again.code]).toEqual([false, 1]);
                expect(again.message).toContain("was already loaded");
                // Its service is not loaded before the timer fires: stopping both answers 5 for it, and stops the timer.
                const stop = await one(host, { op: "exec", argv: ["systemctl", "stop", `${unit}.timer`, `${unit}.service`] });
                expect([stop.ok, stop.code]).toEqual([false, 5]);
                expect(stop.message).toContain(`${unit}.service not loaded`);
                expect((await arm()).ok).toBe(true);
            } finally {
                await host.run([{ op: "exec", argv: ["systemctl", "stop", `${unit}.timer`, `${unit}.service`], optional: true }, { op: "remove", path: "/run/pulumi-vfio-contract.batch" }]);
            }
        });
    });
}
