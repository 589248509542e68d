//! CPUID policy: what KVM supports, with each vCPU's APIC ID and topology,
//! the hypervisor bit, and on emulating hosts the KVM paravirtual features
//! that hang there taken away (PLATFORM.md).

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_KVM_FEATURES: u32 = 0x4000_0001;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// KVM paravirtual feature bits (CPUID 0x4000_0001 EAX) that emulating hosts
/// cannot serve: async page faults, steal time, PV unhalt, PV TLB flush
/// (needs steal time), PV send-IPI and PV sched-yield (hypercalls hang).
pub const PV_FEATURES_HIDDEN_WHEN_EMULATED: u32 = (1 << 4) // ASYNC_PF
    | (1 << 5) // STEAL_TIME
    | (1 << 7) // PV_UNHALT
    | (1 << 9) // PV_TLB_FLUSH
    | (1 << 10) // ASYNC_PF_VMEXIT
    | (1 << 11) // PV_SEND_IPI
    | (1 << 13) // PV_SCHED_YIELD
    | (1 << 14); // ASYNC_PF_INT

/// Bits needed to number `count` items (ceil(log2(count))).
fn id_bits(count: u32) -> u32 {
    32 - count.saturating_sub(1).leading_zeros()
}

fn filter_entry(e: &mut kvm_cpuid_entry2, cpu: u8, cpus: u8, emulated: bool) {
    let (cpu, cpus) = (u32::from(cpu), u32::from(cpus));
    match e.function {
        LEAF_FEATURES => {
            e.ebx = (e.ebx & 0x0000_ffff) | (cpu << 24) | (cpus << 16);
            e.ecx |= ECX_HYPERVISOR;
            if cpus > 1 {
                e.edx |= EDX_HTT;
            }
        }
        LEAF_CACHE_PARAMS => {
            // Cores per package - 1 in EAX[31:26]; one package holds all.
            e.eax = (e.eax & 0x03ff_ffff) | ((cpus - 1) << 26);
        }
        LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
            // Level 0: one thread per core; level 1: all cores in one package.
            e.edx = cpu;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = (1 << 8) | e.index;
                }
                1 => {
                    e.eax = id_bits(cpus);
                    e.ebx = cpus;
                    e.ecx = (2 << 8) | e.index;
                }
                _ => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = e.index;
                }
            }
        }
        LEAF_KVM_FEATURES if emulated => e.eax &= !PV_FEATURES_HIDDEN_WHEN_EMULATED,
        _ => {}
    }
}

/// The CPUID table for vCPU `cpu` of `cpus`.
pub fn for_vcpu(supported: &CpuId, cpu: u8, cpus: u8, emulated: bool) -> CpuId {
    let mut table = supported.clone();
    for e in table.as_mut_slice() {
        filter_entry(e, cpu, cpus, emulated);
    }
    table
}

/// Feature words a restored guest may rely on: (leaf, subleaf, register
/// name, bits that are not features of the CPU but of its state or of
/// Ember's topology, and so are not compared).
const FEATURE_WORDS: [(u32, u32, &str, u32); 7] = [
    // OSXSAVE mirrors CR4, HYPERVISOR is Ember's own.
    (LEAF_FEATURES, 0, "ecx", (1 << 27) | ECX_HYPERVISOR),
    (LEAF_FEATURES, 0, "edx", EDX_HTT),
    (0x7, 0, "ebx", 0),
    // OSPKE mirrors CR4.
    (0x7, 0, "ecx", 1 << 4),
    (0x7, 0, "edx", 0),
    (0x8000_0001, 0, "ecx", 0),
    (0x8000_0001, 0, "edx", 0),
];

fn register(e: &kvm_cpuid_entry2, name: &str) -> u32 {
    match name {
        "eax" => e.eax,
        "ebx" => e.ebx,
        "ecx" => e.ecx,
        _ => e.edx,
    }
}

fn find(table: &[kvm_cpuid_entry2], leaf: u32, subleaf: u32) -> Option<&kvm_cpuid_entry2> {
    table.iter().find(|e| {
        e.function == leaf && (e.index == subleaf || e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0)
    })
}

/// The CPU features a saved vCPU had that this host's KVM cannot give:
/// (leaf, register, missing bits), empty when the snapshot fits the host.
pub fn missing_features(
    saved: &[kvm_cpuid_entry2],
    supported: &[kvm_cpuid_entry2],
) -> Vec<(u32, &'static str, u32)> {
    let mut missing = Vec::new();
    for (leaf, subleaf, reg, ignored) in FEATURE_WORDS {
        let Some(want) = find(saved, leaf, subleaf) else {
            continue;
        };
        let have = find(supported, leaf, subleaf).map_or(0, |e| register(e, reg));
        let lacking = register(want, reg) & !have & !ignored;
        if lacking != 0 {
            missing.push((leaf, reg, lacking));
        }
    }
    missing
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0,
            edx: 0,
            ..Default::default()
        }
    }

    fn table() -> CpuId {
        CpuId::from_entries(&[
            entry(LEAF_FEATURES, 0),
            entry(LEAF_TOPOLOGY, 1),
            entry(LEAF_KVM_FEATURES, 0),
        ])
        .unwrap()
    }

    #[test]
    fn features_the_host_lacks_are_named_and_state_bits_ignored() {
        let mut host = entry(LEAF_FEATURES, 0);
        host.ecx = 0b1011;
        host.edx = 0;
        let mut saved = host;
        saved.ecx = 0b1111 | (1 << 27) | ECX_HYPERVISOR;
        saved.edx = EDX_HTT;
        assert_eq!(
            missing_features(&[saved], &[host]),
            vec![(LEAF_FEATURES, "ecx", 0b0100)]
        );
        saved.ecx = 0b1011;
        assert!(missing_features(&[saved], &[host]).is_empty());
        assert!(
            missing_features(&[], &[host]).is_empty(),
            "a leaf the vCPU did not have asks for nothing"
        );
    }

    #[test]
    fn each_vcpu_gets_its_apic_id_and_the_hypervisor_bit() {
        let t = for_vcpu(&table(), 3, 4, false);
        let e = t.as_slice();
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(e[1].edx, 3);
        assert_eq!((e[1].eax, e[1].ebx), (2, 4));
        assert_eq!(e[2].eax, 0xffff_ffff, "PV features untouched on hardware");
    }

    #[test]
    fn emulating_hosts_lose_the_pv_features_that_hang() {
        let t = for_vcpu(&table(), 0, 2, true);
        let kvm = t.as_slice()[2].eax;
        assert_eq!(kvm & PV_FEATURES_HIDDEN_WHEN_EMULATED, 0);
        assert_eq!(kvm | PV_FEATURES_HIDDEN_WHEN_EMULATED, 0xffff_ffff);
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!([1, 2, 3, 4, 5, 254].map(id_bits), [0, 1, 2, 2, 3, 8]);
    }
}
