//! Arrival times from the kernel. A receiver's own clock reads a request
//! when its thread gets to it, and on two busy cores that can be tens of
//! milliseconds after the bytes came in: two requests sent 100 ms apart
//! can be handled 10 ms apart and look like a broken rate limit. So each
//! receiver's connections ask the kernel to stamp what they receive
//! (`SO_TIMESTAMPNS`), and a request's arrival is the stamp of the read
//! that brought it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// When the kernel received a connection's latest bytes, as an `Instant`.
#[derive(Clone, Default)]
pub struct Arrival(Arc<Mutex<Option<Instant>>>);

impl Arrival {
    pub fn latest(&self) -> Option<Instant> {
        *self.0.lock().unwrap()
    }

    /// `stamp` is the kernel's wall-clock time of the bytes; the `Instant`
    /// is taken as far before now as the wall clock says they came.
    fn note(&self, stamp: Duration) {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let ago = wall
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(stamp);
        *self.0.lock().unwrap() = Some(now.checked_sub(ago).unwrap_or(now));
    }
}

/// A TCP connection whose reads note their kernel arrival time.
pub struct Stamped {
    io: TcpStream,
    arrival: Arrival,
}

pub struct StampedListener(pub TcpListener);

impl Listener for StampedListener {
    type Io = Stamped;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Stamped, SocketAddr) {
        loop {
            match self.0.accept().await {
                Ok((io, addr)) => {
                    ask_for_stamps(io.as_raw_fd()).expect("SO_TIMESTAMPNS");
                    let arrival = Arrival::default();
                    return (Stamped { io, arrival }, addr);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

impl Connected<IncomingStream<'_, StampedListener>> for Arrival {
    fn connect_info(stream: IncomingStream<'_, StampedListener>) -> Self {
        stream.io().arrival.clone()
    }
}

fn ask_for_stamps(fd: RawFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option value of the stated size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One `recvmsg`: the bytes read and the kernel's stamp of them, as time
/// since the epoch.
fn receive(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, Option<Duration>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: fd is an open socket, msg points at live buffers.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: the control messages are walked with the kernel's own macros
    // over the buffer the kernel filled.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                stamp = Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, stamp))
}

impl AsyncRead for Stamped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let fd = this.io.as_raw_fd();
        loop {
            ready!(this.io.poll_read_ready(cx))?;
            let dst = buf.initialize_unfilled();
            match this.io.try_io(Interest::READABLE, || receive(fd, dst)) {
                Ok((n, stamp)) => {
                    if let Some(stamp) = stamp {
                        this.arrival.note(stamp);
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Stamped {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
