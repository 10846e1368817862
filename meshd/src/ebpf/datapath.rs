//! [`Datapath`]: the loaded programs, their maps and their cgroup attachments.

use std::{
    collections::HashMap,
    fs::File,
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, CgroupSockopt, SockOps,
    },
    Ebpf, EbpfLoader,
};
use meshd_common::{program_names as progs, WorkloadInfo};
use tracing::{info, warn};

use super::{
    maps::Maps,
    object,
    pins::{PinDir, StaleLinks},
    Error,
};
use crate::cgroup;

/// aya attaches with BPF links (kernel ≥ 5.7); cgroup links take no flags and always behave as
/// `BPF_F_ALLOW_MULTI`, so they coexist with other programs on the same cgroup.
const LINK_MODE: CgroupAttachMode = CgroupAttachMode::Single;

/// Where to load from and pin to.
#[derive(Debug, Clone)]
pub struct DatapathOptions {
    /// Node name: names the pin folder, so several agents (simulated nodes) share one kernel.
    pub node: String,
    /// Mount point of the BPF filesystem (mounted if missing).
    pub bpffs: PathBuf,
    /// An eBPF object file to load instead of the embedded one.
    pub object: Option<PathBuf>,
}

pub struct Datapath {
    ebpf: Ebpf,
    maps: Maps,
    pins: PinDir,
    stale: StaleLinks,
    /// Pinned links of each enrolled cgroup, by cgroup id.
    attached: HashMap<u64, Vec<PinnedLink>>,
}

impl Datapath {
    /// Checks privileges and kernel, loads and verifies the programs, pins the maps.
    pub fn load(opts: &DatapathOptions) -> Result<Self, Error> {
        object::check_privileges()?;
        object::check_kernel()?;
        let bytes = object::bytes(opts.object.as_deref())?;
        let (pins, stale) = PinDir::prepare(&opts.bpffs, &opts.node)?;
        let mut ebpf = EbpfLoader::new().load(&bytes).map_err(Error::Load)?;
        for name in [progs::CONNECT4, progs::CONNECT6] {
            let prog: &mut CgroupSockAddr = program(&mut ebpf, name)?;
            prog.load().map_err(|source| Error::Verifier { program: name, source })?;
        }
        let sockops: &mut SockOps = program(&mut ebpf, progs::SOCKOPS)?;
        sockops.load().map_err(|source| Error::Verifier { program: progs::SOCKOPS, source })?;
        let ingress: &mut CgroupSkb = program(&mut ebpf, progs::INGRESS)?;
        ingress.load().map_err(|source| Error::Verifier { program: progs::INGRESS, source })?;
        let getsockopt: &mut CgroupSockopt = program(&mut ebpf, progs::GETSOCKOPT)?;
        getsockopt.load().map_err(|source| Error::Verifier { program: progs::GETSOCKOPT, source })?;
        let maps = Maps::take(&mut ebpf, &pins)?;
        info!(pins = %pins.root().display(), "eBPF programs loaded");
        Ok(Self { ebpf, maps, pins, stale, attached: HashMap::new() })
    }

    pub fn maps(&mut self) -> &mut Maps {
        &mut self.maps
    }

    pub fn pin_dir(&self) -> &Path {
        self.pins.root()
    }

    /// Attaches the getsockopt program (SO_ORIGINAL_DST) to the agent's own cgroup. It lives as
    /// long as this process: nobody else needs it.
    pub fn attach_getsockopt(&mut self, cgroup: &Path) -> Result<(), Error> {
        let fd = open_cgroup(cgroup)?;
        let prog: &mut CgroupSockopt = program(&mut self.ebpf, progs::GETSOCKOPT)?;
        prog.attach(&fd, LINK_MODE).map_err(|source| Error::Attach {
            program: progs::GETSOCKOPT,
            cgroup: cgroup.into(),
            source,
        })?;
        Ok(())
    }

    /// Enrolls a workload's cgroup: records it in `ENROLLED`, then attaches connect4/6 and
    /// sockops to it (links pinned). Re-enrolling updates the map entry only.
    pub fn enroll(&mut self, cgroup: &Path, info: WorkloadInfo) -> Result<u64, Error> {
        let id = cgroup::cgroup_id(cgroup)?;
        self.maps.enroll(id, info)?;
        if self.attached.contains_key(&id) {
            return Ok(id);
        }
        match self.attach_all(cgroup, id) {
            Ok(links) => {
                self.attached.insert(id, links);
                // This run's programs are attached: an earlier run's may go.
                self.stale.release_cgroup(id);
                Ok(id)
            }
            Err(e) => {
                let _ = self.maps.unenroll(id);
                Err(e)
            }
        }
    }

    fn attach_all(&mut self, cgroup: &Path, id: u64) -> Result<Vec<PinnedLink>, Error> {
        let fd = open_cgroup(cgroup)?;
        let mut links = Vec::with_capacity(4);
        let attach_err = |program, source| Error::Attach { program, cgroup: cgroup.into(), source };
        for name in [progs::CONNECT4, progs::CONNECT6] {
            let prog: &mut CgroupSockAddr = program(&mut self.ebpf, name)?;
            let link_id = prog.attach(&fd, LINK_MODE).map_err(|e| attach_err(name, e))?;
            let link = prog.take_link(link_id).map_err(|e| attach_err(name, e))?;
            links.push(self.pin_link(FdLink::try_from(link), id, name)?);
        }
        let prog: &mut SockOps = program(&mut self.ebpf, progs::SOCKOPS)?;
        let link_id = prog.attach(&fd, LINK_MODE).map_err(|e| attach_err(progs::SOCKOPS, e))?;
        let link = prog.take_link(link_id).map_err(|e| attach_err(progs::SOCKOPS, e))?;
        links.push(self.pin_link(FdLink::try_from(link), id, progs::SOCKOPS)?);
        let prog: &mut CgroupSkb = program(&mut self.ebpf, progs::INGRESS)?;
        let link_id =
            prog.attach(&fd, CgroupSkbAttachType::Ingress, LINK_MODE).map_err(|e| attach_err(progs::INGRESS, e))?;
        let link = prog.take_link(link_id).map_err(|e| attach_err(progs::INGRESS, e))?;
        links.push(self.pin_link(FdLink::try_from(link), id, progs::INGRESS)?);
        Ok(links)
    }

    fn pin_link(
        &self,
        link: Result<FdLink, aya::programs::links::LinkError>,
        cgroup_id: u64,
        name: &'static str,
    ) -> Result<PinnedLink, Error> {
        let path = self.pins.link_path(cgroup_id, name);
        let pin_err = |detail: String| Error::Pin { what: format!("link of {name}"), path: path.clone(), detail };
        let link = link.map_err(|e| pin_err(e.to_string()))?;
        link.pin(&path).map_err(|e| pin_err(format!("{e:?}")))
    }

    /// Unenrolls a cgroup: detaches its programs first (its sockets connect directly again),
    /// then removes it from `ENROLLED`.
    pub fn unenroll(&mut self, cgroup_id: u64) -> Result<(), Error> {
        if let Some(links) = self.attached.remove(&cgroup_id) {
            for link in links {
                if let Err(e) = link.unpin() {
                    warn!(cgroup_id, error = %e, "unpin link");
                }
            }
        }
        self.maps.unenroll(cgroup_id)
    }

    pub fn is_enrolled(&self, cgroup_id: u64) -> bool {
        self.attached.contains_key(&cgroup_id)
    }

    /// After start-up enrollment: releases the links an earlier run left on cgroups that are
    /// gone; keeps those of cgroups that still exist (they stay failing closed until enrolled).
    pub fn release_stale(&mut self, existing_cgroups: &std::collections::HashSet<u64>) {
        let before = self.stale.len();
        self.stale.release_gone(existing_cgroups);
        if before > 0 {
            info!(released = before - self.stale.len(), kept = self.stale.len(), "links of an earlier run handled");
        }
    }

    /// Releases the links an earlier run left on one cgroup (its workload is unenrolled).
    pub fn release_earlier(&mut self, cgroup_id: u64) {
        self.stale.release_cgroup(cgroup_id);
    }

    /// Detaches everything, an earlier run's links included, and removes the pins (uninstall).
    pub fn shutdown(mut self) -> Result<(), Error> {
        let ids: Vec<u64> = self.attached.keys().copied().collect();
        for id in ids {
            self.unenroll(id)?;
        }
        self.stale.release_all();
        self.pins.remove_all()
    }

    /// A start-up that failed: detaches what this run attached and removes its map pins, but
    /// leaves an earlier run's links in place (their workloads keep failing closed).
    pub fn abandon(mut self) -> Result<(), Error> {
        let ids: Vec<u64> = self.attached.keys().copied().collect();
        for id in ids {
            self.unenroll(id)?;
        }
        if self.stale.is_empty() {
            self.pins.remove_all()
        } else {
            self.pins.remove_maps()
        }
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, Error>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name).and_then(|p| p.try_into().ok()).ok_or(Error::MissingProgram { program: name })
}

fn open_cgroup(cgroup: &Path) -> Result<File, Error> {
    File::open(cgroup).map_err(|source| Error::Io { op: "open cgroup", path: cgroup.into(), source })
}
